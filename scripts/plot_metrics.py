"""Plot the FM accuracy per round of every run under a fed-result folder (and the sub-FM's, dashed).

    python scripts/plot_metrics.py demo-output/fed-result/bbc --out demo-output/bbc.png
The same `load_runs` function serves notebooks (see scripts/plots.ipynb).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_runs(root: str | Path) -> dict[str, list[dict]]:
    """{run label: metrics.jsonl records} for every run folder under `root`."""
    runs = {}
    for metrics in sorted(Path(root).rglob("metrics.jsonl")):
        summary_path = metrics.parent / "summary.json"
        method = json.loads(summary_path.read_text()).get("method") if summary_path.exists() else None
        label = method or metrics.parent.name
        runs[label] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return runs


def plot(runs: dict[str, list[dict]], metric: str = "eval_accuracy", title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in runs.items():
        rounds = [r["round"] for r in records if metric in r.get("fm", {})]
        ax.plot(rounds, [r["fm"][metric] for r in records if metric in r.get("fm", {})], label=f"{label}: FM")
        sub = [(r["round"], r["sub_fm"][metric]) for r in records if metric in (r.get("sub_fm") or {})]
        if sub:
            ax.plot(*zip(*sub), linestyle="--", alpha=0.7, label=f"{label}: client model")
        aligned = [r["round"] for r in records if r.get("aligned")]
        for x in aligned:
            ax.axvline(x, color="grey", alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--metric", default="eval_accuracy")
    p.add_argument("--title", default="")
    p.add_argument("--out", default="images/metrics.png")
    args = p.parse_args()
    runs = load_runs(args.root)
    if not runs:
        print(f"error: no metrics.jsonl under {args.root}", file=sys.stderr)
        return 1
    fig = plot(runs, args.metric, args.title)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
