"""The matplotlib figures of the tables (scripts/plot_results.py writes them as PNG files): per model and task of
Table 1 FM accuracy per round and against cumulative bytes, of Table 2 final accuracy against the Dirichlet α, of
Table 3 per ablation method, of Table 4 against t and p, and of Table 5 (a decoder LLM, beyond the paper) its topic
accuracy and answer loss per round, one figure per setting. A figure whose data is missing is None; only finished
runs are drawn. Figures are built on matplotlib.figure.Figure, so no pyplot backend is needed."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from federated_proxy_finetuning.report.cells import cell_stats, table_cells
from federated_proxy_finetuning.report.claim_lines import seed_list
from federated_proxy_finetuning.report.paper import METHODS, SETTING_LABELS, TABLES
from federated_proxy_finetuning.report.runs import load_runs, read_metrics

MB = 1e6
ALPHAS = {"dir1": 1, "dir5": 5, "dir10": 10}
T_SETTINGS = {"t5": 5, "t10": 10, "t20": 20}  # at p = 0.5
P_SETTINGS = {"p0.3": 0.3, "t10": 0.5, "p0.8": 0.8}  # at t = 10: the t10 run is the p = 0.5 run


def method_color(method: str) -> str:
    """One colour per method across every figure (tab10 in METHODS order)."""
    return f"C{METHODS.index(method) % 10}" if method in METHODS else "0.3"


def run_curve(path: str, metric: str) -> pd.DataFrame:
    """round, accuracy (%), answer loss (a causal LM's eval_loss in nats; NaN for a classifier, whose evaluation has
    no perplexity) and cumulative MB (sent + received; NaN where the run logged no byte counts) of one run's
    evaluated rounds."""
    rows, total = [], 0
    for record in read_metrics(path):
        counted = "bytes_sent" in record or "bytes_sent_cumulative" in record
        total += record.get("bytes_sent", 0) + record.get("bytes_received", 0)
        cumulative = record.get("bytes_sent_cumulative", 0) + record.get("bytes_received_cumulative", 0)
        if metric in record.get("fm", {}):
            rows.append(
                {
                    "round": record["round"],
                    "accuracy": record["fm"][metric] * 100,
                    "loss": record["fm"].get("eval_loss", math.nan) if "eval_perplexity" in record["fm"] else math.nan,
                    "mb": (cumulative or total) / MB if counted else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["round", "accuracy", "loss", "mb"])


def method_curves(runs: pd.DataFrame, value: str = "accuracy", first_round: int = 0) -> dict[str, pd.DataFrame]:
    """{method: per-round mean, min and max of `value` (a run_curve column: accuracy or loss) and mean cumulative MB
    over its finished seeds}, from round `first_round` on; rounds where no seed recorded the value are left out."""
    curves = {}
    for method, group in runs[runs["finished"]].groupby("method"):
        per_seed = pd.concat([run_curve(r.path, r.metric) for r in group.itertuples()], ignore_index=True)
        per_seed = per_seed[per_seed["round"] >= first_round].dropna(subset=[value])
        if not per_seed.empty:
            by_round = per_seed.groupby("round")
            curves[method] = by_round[value].agg(["mean", "min", "max"]).join(by_round["mb"].mean()).reset_index()
    return dict(sorted(curves.items(), key=lambda kv: METHODS.index(kv[0]) if kv[0] in METHODS else len(METHODS)))


def alignment_rounds(runs: pd.DataFrame) -> list[int]:
    """Rounds at whose end a FedPFT run aligned (the first finished FedPFT seed; evaluated rounds or not)."""
    fedpft = runs[runs["finished"] & (runs["method"] == "FedPFT")]
    if fedpft.empty:
        return []
    return [int(record["round"]) for record in read_metrics(fedpft.iloc[0]["path"]) if record.get("aligned")]


def _axes(title: str, xlabel: str, ncols: int = 1, width: float = 7) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, 4), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FM accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, axes


def _draw_curves(ax, curves: dict[str, pd.DataFrame], aligned: list[int]) -> None:
    """One line per method (mean over seeds, band min–max) and the FedPFT alignment rounds as dashed lines; a method
    evaluated at one round only is a marker with min–max bars, set a little apart from the others' so that none
    hides another."""
    for x in aligned:
        ax.axvline(x, color="0.4", alpha=0.5, linewidth=0.8, linestyle="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    single = [method for method, curve in curves.items() if len(curve) == 1]
    for method, curve in curves.items():
        color = method_color(method)
        if method in single:
            x = curve["round"] + 0.15 * (single.index(method) - (len(single) - 1) / 2)
            bars = [curve["mean"] - curve["min"], curve["max"] - curve["mean"]]
            ax.errorbar(x, curve["mean"], yerr=bars, color=color, marker="o", capsize=3, linestyle="", label=method)
            continue
        ax.plot(curve["round"], curve["mean"], color=color, label=method)
        ax.fill_between(curve["round"], curve["min"], curve["max"], color=color, alpha=0.2)
    if curves:
        ax.legend(fontsize=8, title="dashed: FedPFT alignments" if aligned else None, title_fontsize=7)


def figure_rounds(runs: pd.DataFrame, title: str) -> Figure | None:
    curves = method_curves(runs)
    if not curves:
        return None
    fig, (ax,) = _axes(title + " — FM accuracy per round (mean over seeds, band min–max)", "round")
    _draw_curves(ax, curves, alignment_rounds(runs))
    return fig


TOPIC_CHANCE = 100 / 11  # % of wiki-qa's topic accuracy by chance: 11 topics


def figure_lm_curves(runs: pd.DataFrame, title: str) -> Figure | None:
    """A causal LM's FM per evaluated round ≥ 1: topic accuracy (left, with chance) and answer loss (right), each with
    the untuned FM (round 0: the same model for every method and seed, evaluated in some runs only) as a line."""
    accuracy, loss = method_curves(runs, first_round=1), method_curves(runs, "loss", first_round=1)
    if not accuracy and not loss:
        return None
    fig, (left, right) = _axes(title + " — FM per round (mean over seeds, min–max)", "round", ncols=2, width=11)
    left.set_ylabel("topic accuracy (%, calibrated label word)")
    right.set_ylabel("answer loss (nats per answer token)")
    aligned = alignment_rounds(runs)
    _draw_curves(left, accuracy, aligned)
    _draw_curves(right, loss, aligned)
    untuned = runs[runs["round0"].notna()]  # as the table's "Before tuning" line: every run that evaluated it
    if not untuned.empty:
        style = {"color": "0.2", "linewidth": 1, "linestyle": "-."}
        left.axhline(untuned["round0"].mean() * 100, label="untuned FM (round 0)", **style)
        right.axhline(untuned["round0_loss"].mean(), label="untuned FM (round 0)", **style)
    left.axhline(TOPIC_CHANCE, color="0.5", linewidth=0.8, linestyle=":", label="chance (9.1 %)")
    last = max([curve["round"].max() for curve in [*accuracy.values(), *loss.values()]])
    for ax in (left, right):
        ax.set_xlim(-0.5, last + 0.5)  # from round 0, where the untuned FM stands
        ax.legend(fontsize=8, title="dashed: FedPFT alignments" if aligned else None, title_fontsize=7)
    return fig


def figure_bytes(runs: pd.DataFrame, title: str) -> Figure | None:
    curves = method_curves(runs)
    if not curves:
        return None
    curves = {method: curve.dropna(subset=["mb"]) for method, curve in curves.items()}
    curves = {method: curve for method, curve in curves.items() if not curve.empty}  # runs without byte counts
    if not curves:
        return None
    fig, (ax,) = _axes(title + " — accuracy against communication", "cumulative MB sent + received (training only)")
    for method, curve in curves.items():
        ax.plot(curve["mb"], curve["mean"], marker=".", markersize=3, color=method_color(method), label=method)
    ax.legend(fontsize=8)
    return fig


def on_common_seeds(cells: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The finished cells, their final accuracy's mean and std taken over the seeds every one of them has where their
    seed sets differ (a cell borrowed from Table 1 has five seeds, its neighbours three), so the points compare the
    seeds the table's paired links compare; and a note naming those seeds ("" when the sets are equal). Cells with no
    seed in common keep their own seeds, noted as unequal."""
    cells = cells[cells["n"] > 0]
    sets = {frozenset(finals) for finals in cells["finals"]}
    if len(sets) <= 1:
        return cells, ""
    common = sorted(frozenset.intersection(*sets))
    if not common:
        return cells, "unequal seed sets"
    values = [[finals[s] for s in common] for finals in cells["finals"]]
    mean = [statistics.fmean(v) for v in values]
    std = [statistics.stdev(v) if len(v) > 1 else math.nan for v in values]
    return cells.assign(final_mean=mean, final_std=std), f"seeds {seed_list(common)}, those every point has"


def _errorbars(ax, cells: pd.DataFrame, xs: dict) -> bool:
    """Final accuracy ± std per method at the settings in `xs` ({setting: x}), over the seeds every point has
    (on_common_seeds, named above the panel); False when nothing was drawn."""
    drawn = False
    cells, note = on_common_seeds(cells[cells["setting"].isin(list(xs))])
    if note:
        ax.set_title(note, fontsize=9)
    for method, group in cells.groupby("method", sort=False):
        group = group.assign(x=group["setting"].map(xs)).sort_values("x")
        ax.errorbar(
            group["x"],
            group["final_mean"],
            yerr=group["final_std"].fillna(0),
            marker="o",
            capsize=3,
            color=method_color(method),
            label=method,
        )
        drawn = True
    if drawn:
        ax.set_xticks(sorted(xs.values()))
        ax.legend(fontsize=8)
    return drawn


def figure_alpha(cells: pd.DataFrame, title: str) -> Figure | None:
    fig, (ax,) = _axes(title + " — final accuracy against Dirichlet α (± seed std)", "Dirichlet α")
    return fig if _errorbars(ax, cells, ALPHAS) else None


def figure_ablation(cells: pd.DataFrame, title: str) -> Figure | None:
    cells, note = on_common_seeds(cells)
    if cells.empty:
        return None
    fig, (ax,) = _axes(title + " — ablation, final accuracy (± seed std)", "method")
    if note:
        ax.set_title(note, fontsize=9)
    labels = cells["method"] + cells["shared_from"].map(lambda t: f" ({t})" if t else "")
    ax.bar(
        labels,
        cells["final_mean"],
        yerr=cells["final_std"].fillna(0),
        capsize=4,
        color=[method_color(m) for m in cells["method"]],
    )
    low = (cells["final_mean"] - cells["final_std"].fillna(0)).min()
    ax.set_ylim(max(0, low - 5), None)
    return fig


def figure_t_p(cells: pd.DataFrame, title: str) -> Figure | None:
    fig, (left, right) = _axes(title + " — final accuracy (± seed std)", "", ncols=2, width=10)
    left.set_xlabel("alignment interval t (p = 0.5)")
    right.set_xlabel("updated-neuron proportion p (t = 10)")
    drawn = [_errorbars(left, cells, T_SETTINGS), _errorbars(right, cells, P_SETTINGS)]
    return fig if any(drawn) else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def figures(root: str | Path, runs: pd.DataFrame) -> Iterator[tuple[str, Figure | None]]:
    """(file name, figure or None when its data is missing) for every file scripts/plot_results.py lists."""
    prefix = _slug(Path(root).resolve().name)
    stats = cell_stats(runs)
    table1 = runs[(runs["table"] == "table1") & (runs["setting"] == "iid")]
    for (model, task), group in table1.groupby(["model", "task"]):
        name = f"{prefix}_table1_{_slug(model)}_{_slug(task)}"
        yield f"{name}_rounds.png", figure_rounds(group, f"{model} · {task}")
        yield f"{name}_bytes.png", figure_bytes(group, f"{model} · {task}")
    per_table = {
        "table2": ("alpha", figure_alpha),
        "table3": ("ablation", figure_ablation),
        "table4": ("t_p", figure_t_p),
    }
    for table, (suffix, draw) in per_table.items():
        if not (stats["table"] == table).any():
            continue
        cells = table_cells(stats, table)
        for (model, task), group in cells.groupby(["model", "task"], sort=False):
            yield f"{prefix}_{table}_{_slug(model)}_{_slug(task)}_{suffix}.png", draw(group, f"{model} · {task}")
    table5 = runs[runs["table"] == "table5"]
    for (model, task, setting), group in table5.groupby(["model", "task", "setting"]):
        name = f"{prefix}_table5_{_slug(model)}_{_slug(task)}_curves" + (
            "" if setting == "iid" else f"-{_slug(setting)}"
        )
        title = f"{model} · {task}" + ("" if setting == "iid" else f" · {SETTING_LABELS.get(setting, setting)}")
        yield f"{name}.png", figure_lm_curves(group, title)


def write_plots(root: str | Path, out: str | Path) -> tuple[list[Path], list[str]]:
    """Save every figure under `out`; returns (written paths, notes on skipped figures and on the paper's tables
    without runs: Table 5, beyond the paper, is drawn when it has runs and passed over silently otherwise)."""
    runs = load_runs(root)
    out = Path(out)
    written, notes = [], []
    tables = set(runs["table"])
    notes += [f"skip {t}: no runs under {Path(root) / t}" for t in TABLES if t not in tables]
    for name, fig in figures(root, runs):
        if fig is None:
            notes.append(f"skip {name}: no finished runs with the data it needs")
            continue
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / name, dpi=120)
        written.append(out / name)
    return written, notes
