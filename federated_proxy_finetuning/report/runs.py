"""Loading result folders into run records: one flat record per run folder under <root>/table<N>/ and
<root>/ceiling/, read from its config.json, metrics.jsonl and summary.json.

Layout read: <root>/table<N>/<model>/<task>/<setting>/<method>/ is one *cell*; below it the training program writes
<task_name>/<model folder>/<run>-seed<S>/. A run killed mid-write counts as unfinished rather than stopping the
report."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

CELL = ["table", "model", "task", "setting", "method"]
RUN_COLUMNS = CELL + [
    "seed",
    "finished",
    "metric",
    "final",
    "final_loss",
    "final_perplexity",
    "round0",
    "round0_loss",
    "round0_perplexity",
    "best",
    "final_round",
    "best_round",
    "one_class",
    "predicted_counts",
    "rounds",
    "num_clients",
    "proportion",
    "client_params",
    "fm_params",
    "bytes_total",
    "shipping_bytes",
    "wall_seconds",
    *(SETTING_FIELDS := ["lr", "lora_rank", "lora_alpha", "batch", "local_epochs", "eval_every", "max_length"]),
    "eval_round_zero",
    "align_t",
    "align_p",
    "path",
]
NUMERIC = ["seed", "final", "final_loss", "final_perplexity", "best", "final_round", "best_round", "rounds"]
NUMERIC += ["round0", "round0_loss", "round0_perplexity"]
NUMERIC += ["num_clients", "proportion"]
NUMERIC += ["client_params", "fm_params", "bytes_total", "shipping_bytes", "wall_seconds"]
NUMERIC += [*SETTING_FIELDS, "align_t", "align_p"]


def read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when the file is missing or unreadable (a run killed mid-write counts as
    unfinished rather than stopping the report)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        logger.warning("ignoring unreadable %s", path)
        return {}


def read_metrics(run: str | Path) -> list[dict]:
    """The metrics.jsonl records of one run folder (empty when the file is missing)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dirs(table_dir: Path) -> list[Path]:
    """Run folders under a table folder: those holding a summary.json or a metrics.jsonl."""
    return sorted({p.parent for name in ("summary.json", "metrics.jsonl") for p in table_dir.rglob(name)})


def communicated_bytes(summary: dict, metrics: list[dict]) -> float | None:
    """Bytes sent plus received over a run: the summary's totals, else the last round's cumulative counters."""
    totals = summary.get("communication") or {}
    if "bytes_sent" in totals and "bytes_received" in totals:
        return totals["bytes_sent"] + totals["bytes_received"]
    last = metrics[-1] if metrics else {}
    if "bytes_sent_cumulative" in last and "bytes_received_cumulative" in last:
        return last["bytes_sent_cumulative"] + last["bytes_received_cumulative"]
    return None


def evaluated_rounds(metrics: list[dict], metric: str) -> list[dict]:
    """The metrics.jsonl records whose FM evaluation holds `metric`, in round order."""
    return [record for record in metrics if metric in (record.get("fm") or {})]


def round0(metrics: list[dict], metric: str) -> tuple[float | None, float | None, float | None]:
    """(`metric`, answer loss, perplexity) of the FM evaluated before any round (round 0: the untrained model; for a
    causal LM the untuned FM, the same model for every method and seed); None where round 0 was not evaluated, and
    the loss and perplexity None for a classifier."""
    first = next((r for r in evaluated_rounds(metrics, metric) if (r.get("round") or 0) == 0), None)
    if first is None:
        return None, None, None
    loss, perplexity = answer_loss(first["fm"])
    return first["fm"][metric], loss, perplexity


def best_after_round0(metrics: list[dict], metric: str) -> tuple[float | None, int | None]:
    """(best FM `metric`, its first round) over evaluated rounds ≥ 1; round 0 is the untrained model."""
    trained = [r for r in evaluated_rounds(metrics, metric) if (r.get("round") or 0) >= 1]
    if not trained:
        return None, None
    best = max(trained, key=lambda r: r["fm"][metric])
    return best["fm"][metric], best["round"]


def predictions(metrics: list[dict], metric: str) -> tuple[bool | None, list[int] | None]:
    """(one_class, predicted_counts) of the final evaluated round: the column sums of its confusion matrix (rows =
    true label, columns = predicted label) of the split `metric` belongs to (eval_confusion for eval_accuracy,
    eval_matched_confusion for eval_matched_accuracy); one_class is True when exactly one column is non-zero.
    (None, None) when no confusion was recorded (older runs)."""
    records = evaluated_rounds(metrics, metric)
    fm = records[-1]["fm"] if records else {}
    keys = [k for k in fm if k.endswith("_confusion") and metric.startswith(k.removesuffix("confusion"))]
    if not keys:
        return None, None
    confusion = fm[max(keys, key=len)]
    counts = [int(sum(column)) for column in zip(*confusion)]
    return sum(c > 0 for c in counts) == 1, counts


def answer_loss(final: dict) -> tuple[float | None, float | None]:
    """(eval_loss, eval_perplexity) of a causal LM's final evaluation: the token-weighted negative log-likelihood of
    the answer tokens on the held-out records and its exp. (None, None) for a classifier, whose final evaluation has
    no perplexity: its eval_loss is the classification loss, which the tables do not report."""
    if "eval_perplexity" not in final:
        return None, None
    return final.get("eval_loss"), final["eval_perplexity"]


def training_settings(args: dict) -> dict:
    """The flags a row's runs were trained with (config.json args), for the settings line under each block; the
    alignment interval t and updated share p = 1 - retained ratio only where the run aligned."""
    rounds, t = args.get("num_rounds"), args.get("align_interval")
    aligning = args.get("method") == "pft" and t is not None and rounds is not None and 0 < t < rounds
    retained = args.get("align_retained_ratio")
    return {
        "lr": args.get("learning_rate"),
        "lora_rank": args.get("lora_rank"),
        "lora_alpha": args.get("lora_alpha"),
        "batch": (args.get("per_device_train_batch_size") or 0) * (args.get("gradient_accumulation_steps") or 1)
        or None,
        "local_epochs": args.get("num_epochs"),
        "eval_every": args.get("eval_interval"),
        "eval_round_zero": bool(args.get("eval_round_zero", True)),
        "max_length": args.get("max_length"),
        "align_t": t if aligning else None,
        "align_p": round(1 - retained, 6) if aligning and retained is not None else None,
    }


def run_record(root: Path, run: Path) -> dict | None:
    """One run as a flat record; None when the folder is not at cell depth (<table>/<model>/<task>/<setting>/<method>/...).
    best/best_round come from metrics.jsonl over rounds ≥ 1 (the summary's only when metrics.jsonl is missing)."""
    parts = run.relative_to(root).parts
    if len(parts) < len(CELL) + 1:
        logger.warning("ignoring %s: not below a <table>/<model>/<task>/<setting>/<method> cell", run)
        return None
    config, summary, metrics = read_json(run / "config.json"), read_json(run / "summary.json"), read_metrics(run)
    args = config.get("args", {})
    metric = summary.get("metric") or f"eval_{config.get('metric_for_best_model', 'accuracy')}"
    seed = args.get("seed")
    if seed is None and (match := re.search(r"-seed(\d+)$", run.name)):
        seed = int(match.group(1))
    if (run / "metrics.jsonl").is_file():
        best, best_round = best_after_round0(metrics, metric)
    else:
        best = summary.get("best_metric", (summary.get("best") or {}).get(metric))
        best_round = summary.get("best_round")
    one_class, counts = predictions(metrics, metric)
    loss, perplexity = answer_loss(summary.get("final") or {})
    zero, zero_loss, zero_perplexity = round0(metrics, metric)
    return {
        **dict(zip(CELL, parts)),
        "seed": seed,
        "finished": bool(summary.get("finished", False)),
        "metric": metric,
        "final": (summary.get("final") or {}).get(metric),
        "final_loss": loss,
        "final_perplexity": perplexity,
        "round0": zero,
        "round0_loss": zero_loss,
        "round0_perplexity": zero_perplexity,
        "best": best,
        "final_round": summary.get("final_round"),
        "best_round": best_round,
        "one_class": one_class,
        "predicted_counts": counts,
        "rounds": args.get("num_rounds", summary.get("rounds")),
        "num_clients": args.get("num_clients"),
        "proportion": args.get("proportion"),
        "client_params": config.get("client_encoder_layer_parameters", summary.get("client_encoder_layer_parameters")),
        "fm_params": config.get("fm_encoder_layer_parameters", summary.get("fm_encoder_layer_parameters")),
        "bytes_total": communicated_bytes(summary, metrics),
        "shipping_bytes": (summary.get("communication") or {}).get("model_shipping_bytes"),
        "wall_seconds": summary.get("wall_seconds", summary.get("round_seconds")),
        **training_settings(args),
        "path": str(run),
    }


PLAN_FILE = "plan.tsv"
PLAN_COLUMNS = [*CELL[1:], "seed"]  # a table's cells within it, and the seed


def load_plan(root: str | Path, table: str) -> pd.DataFrame | None:
    """The runs a table script was asked for, from <root>/<table>/plan.tsv (one tab-separated line per run: model,
    task, setting, method, seed; written by scripts/embedded/common.sh), duplicates dropped; None when the table has
    no plan (runs made by hand, or before plans were recorded)."""
    path = Path(root) / table / PLAN_FILE
    if not path.is_file():
        return None
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    bad = [i + 1 for i, row in enumerate(rows) if len(row) != len(PLAN_COLUMNS) or not row[-1].isdigit()]
    if bad:
        logger.warning("ignoring %s: line %d is not 'model, task, setting, method, seed' separated by tabs", path, bad[0])
        return None
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS).drop_duplicates()
    plan["seed"] = plan["seed"].astype(int)
    return plan.reset_index(drop=True)


def planned_not_finished(plan: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `plan` (PLAN_COLUMNS) without a finished run of the same cell and seed in `runs` (one table's)."""
    done = runs.loc[runs["finished"] & runs["seed"].notna(), PLAN_COLUMNS].astype({"seed": int})
    merged = plan.merge(done.drop_duplicates(), on=PLAN_COLUMNS, how="left", indicator=True)
    return merged.loc[merged["_merge"] == "left_only", PLAN_COLUMNS].reset_index(drop=True)


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run folder under <root>/table*/ and <root>/ceiling/ (columns RUN_COLUMNS; accuracies as
    fractions, NaN if missing; final_loss and final_perplexity only for causal-LM runs)."""
    root = Path(root)
    tables = [t for t in sorted(root.iterdir()) if t.is_dir() and re.fullmatch(r"table\d+|ceiling", t.name)]
    records = [run_record(root, run) for table in tables for run in run_dirs(table)]
    runs = pd.DataFrame([r for r in records if r is not None], columns=RUN_COLUMNS)
    runs[NUMERIC] = runs[NUMERIC].apply(pd.to_numeric, errors="coerce")
    runs["finished"] = runs["finished"].astype(bool)
    runs["one_class"] = runs["one_class"].astype(object)  # True / False / None (not recorded)
    return runs
