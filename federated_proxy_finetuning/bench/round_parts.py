"""The round profile's pure helpers (scripts/profile_round.py): a round's wall time split by part from the run's
timings.jsonl, suite-against-plain comparisons of interleaved timings, and the markdown of both."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

# the parts of a round, as timings.jsonl names them, and how the report names them
PARTS = {
    "train": "client training",
    "aggregate": "aggregation + plug-in",
    "eval": "evaluation",
    "align": "alignment",
    "checkpoint": "checkpoint",
    "log": "logging",
    "rest": "the rest",
}


def round_split(timings: Sequence[dict]) -> dict:
    """Median seconds of each part over rounds, and its share of the median round. `rest` is computed per round as
    total minus the named parts, so a part missing from a record counts as 0 s."""
    if not timings:
        raise ValueError("no round timings to split")
    named = [p for p in PARTS if p != "rest"]
    total = statistics.median(t["total"] for t in timings)
    split = {}
    for part in PARTS:
        if part == "rest":
            values = [t["total"] - sum(t.get(p, 0.0) for p in named) for t in timings]
        else:
            values = [t.get(part, 0.0) for t in timings]
        seconds = statistics.median(values)
        split[part] = {"seconds": seconds, "percent": 100 * seconds / total if total else 0.0}
    return {"rounds": [t["round"] for t in timings], "total_seconds": total, "parts": split}


def comparison(suite: Sequence[float], plain: Sequence[float], work: float, unit: str) -> dict:
    """Medians of interleaved timings of the same `work` (examples, steps), their rates and suite/plain time ratio."""
    s, p = statistics.median(suite), statistics.median(plain)
    return {
        "unit": unit,
        "work": work,
        "suite_seconds": list(suite),
        "plain_seconds": list(plain),
        "suite_median_seconds": s,
        "plain_median_seconds": p,
        f"suite_{unit}_per_second": work / s if s else None,
        f"plain_{unit}_per_second": work / p if p else None,
        "time_ratio_suite_to_plain": s / p if p else None,
    }


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each callable (returning its own seconds) `repeats` times, round-robin, so machine noise hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def markdown(result: dict) -> str:
    split = result["round"]
    lines = [
        f"Round profile ({result['settings']['device']}, torch threads {result['settings']['torch_threads']}; "
        f"median of rounds {split['rounds']})",
        "",
        "| part | seconds | % of round |",
        "|---|---:|---:|",
    ]
    for part, name in PARTS.items():
        row = split["parts"][part]
        lines.append(f"| {name} | {row['seconds']:.3f} | {row['percent']:.1f} |")
    lines.append(f"| **total** | {split['total_seconds']:.3f} | 100.0 |")
    lines += ["", "| comparison | suite | plain | suite time / plain time |", "|---|---:|---:|---:|"]
    ev = result["eval"]
    lines.append(
        f"| evaluation, {ev['work']} examples, batch {ev['batch_size']} (examples/s) | "
        f"{ev['suite_examples_per_second']:.1f} | {ev['plain_examples_per_second']:.1f} | "
        f"{ev['time_ratio_suite_to_plain']:.3f} |"
    )
    al = result["align"]
    lines.append(
        f"| alignment, {al['work']} steps of {al['effective_batch_size']} blocks (steps/s) | "
        f"{al['suite_steps_per_second']:.3f} | {al['plain_steps_per_second']:.3f} | "
        f"{al['time_ratio_suite_to_plain']:.3f} |"
    )
    return "\n".join(lines)
