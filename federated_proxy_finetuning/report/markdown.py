"""The tables as markdown: the legend, per table and block its header line (and the table's own note, where the
legend does not cover it), the cells with the paper's numbers beside ours (and, for causal-LM runs, the answer loss
and perplexity), the settings each row's runs were trained with and the judged claims (claim_lines), and the
ceilings after Table 1 (render)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from federated_proxy_finetuning.report.cells import cell_stats, orderings, table_cells, untuned_fm
from federated_proxy_finetuning.report.claim_lines import claim_line, test_line
from federated_proxy_finetuning.report.paper import (
    BBC_HEADING,
    BLOCKS,
    MODELS,
    PAPER_MODEL,
    SETTING_LABELS,
    TABLE_NOTES,
    TABLE_TITLES,
    TASKS,
    block_of,
    display_order,
    paper_numbers,
    task_label,
)
from federated_proxy_finetuning.report.runs import CELL, load_plan, planned_not_finished


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def mean_std(mean: float, std: float, spec: str = ".1f") -> str:
    if math.isnan(mean):
        return "–"
    return fmt(mean, spec) if math.isnan(std) else f"{fmt(mean, spec)} ± {fmt(std, spec)}"


def accuracy_cell(cell: pd.Series) -> str:
    notes = [f"n={cell['n']}"] + ([f"{cell['unfinished']} unfinished"] if cell["unfinished"] else [])
    if cell["n"] == 0:
        notes = notes[1:]
    return f"{mean_std(cell['final_mean'], cell['final_std'])} ({', '.join(notes)})"


def paper_cell(table: str, cell: pd.Series) -> str:
    found = paper_numbers(table, cell["model"], cell["task"], cell["setting"], cell["method"])
    if not found:
        return "–"
    if cell["model"] in PAPER_MODEL:
        return fmt(found[PAPER_MODEL[cell["model"]]])
    return " · ".join(f"{row} {fmt(value)}" for row, value in found.items())


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in [head, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _values(column: pd.Series, spec: str = "g") -> str:
    found = sorted(column.dropna().unique())
    return "/".join(format(v, spec) for v in found) if found else "–"


def plan_note(own: pd.DataFrame, plan: pd.DataFrame | None, shown: int = 6) -> str:
    """", of P planned" and, when some planned runs have not finished, which (per cell, its seeds; the first `shown`
    cells and how many more); "" without a plan."""
    if plan is None or plan.empty:
        return ""
    missing = planned_not_finished(plan, own)
    note = f", of {len(plan)} planned"
    if missing.empty:
        return note
    cells = [
        f"{model} · {task} · {SETTING_LABELS.get(setting, setting)} · {method} seed{'s' if len(g) > 1 else ''} "
        + " ".join(str(s) for s in sorted(g["seed"]))
        for (model, task, setting, method), g in missing.groupby(CELL[1:], sort=False)
    ]
    more = f"; and {len(cells) - shown} more cells" if len(cells) > shown else ""
    return note + f" (**{len(missing)} not finished**: {'; '.join(cells[:shown])}{more})"


def header_line(root: Path, table: str, runs: pd.DataFrame, shared: int, plan: pd.DataFrame | None = None) -> str:
    own = runs[runs["table"] == table]
    line = f"root `{root}`, `{table}`: {len(own)} runs found, {int(own['finished'].sum())} finished{plan_note(own, plan)}"
    if own.empty:
        return line
    line += (
        f"; seeds {_values(own['seed'])}; rounds {_values(own['rounds'])}; clients {_values(own['num_clients'])}, "
        f"{_values(own['proportion'])} of them per round"
    )
    seconds = own.loc[own["finished"], "wall_seconds"].dropna()
    if len(seconds):
        line += f"; run time {seconds.sum() / 60:.0f} min ({len(seconds)} runs, their round times summed)"
    return line + (f"; cells shared with Table 1 (†): {shared}" if shared else "")


def one_class_cell(cell: pd.Series) -> str:
    """e.g. "0/3": runs whose final evaluation predicted one class, of those whose predictions were recorded."""
    if cell["one_class_known"] == 0:
        return "–"
    unknown = cell["n"] - cell["one_class_known"]
    return f"{cell['one_class_runs']}/{cell['one_class_known']}" + (f" ({unknown} not recorded)" if unknown else "")


def cells_markdown(table: str, cells: pd.DataFrame) -> str:
    """The cells as a markdown table; cells of causal-LM runs (an answer loss recorded) show the topic accuracy, the
    final answer loss (nats) and perplexity, and their client parameters are decoder-layer parameters."""
    lm = bool(cells["loss_mean"].notna().any())
    acc = "topic acc" if lm else "acc"
    head = ["model", "task", "setting", "method", f"final {acc} % (n)", f"best {acc} % (round ≥ 1)", "one-class runs"]
    head += ["final answer loss", "perplexity"] if lm else []
    head += ["paper %", "client params (Mi, decoder layers)" if lm else "client params (Mi)", "MB / run"]
    head += ["model shipping MB"]
    rows = []
    for _, cell in cells.iterrows():
        best = mean_std(cell["best_mean"], cell["best_std"])
        row = [
            cell["model"],
            task_label(cell["task"]),
            SETTING_LABELS.get(cell["setting"], cell["setting"]) + (" †" if cell["shared_from"] else ""),
            cell["method"],
            accuracy_cell(cell),
            best + (f" (round {cell['best_rounds']})" if cell["best_rounds"] and best != "–" else ""),
            one_class_cell(cell),
        ]
        if lm:
            row += [
                mean_std(cell["loss_mean"], cell["loss_std"], ".3f"),
                mean_std(cell["ppl_mean"], cell["ppl_std"], ".2f"),
            ]
        row += [
            paper_cell(table, cell),
            fmt(cell["client_params_mi"]),
            fmt(cell["mb_per_run"]),
            fmt(cell["shipping_mb"]),
        ]
        rows.append(row)
    return markdown_table(head, rows)


def settings_lines(runs: pd.DataFrame) -> list[str]:
    """One line per model · task of a block: the settings its runs were trained with (several values joined by /),
    so a row with its own learning rate, LoRA α, batch or t shows them."""
    from federated_proxy_finetuning.tasks import LM_TASKS, TEXT_TASKS  # the tasks whose inputs are token sequences

    lines = []
    for (model, task), group in runs.groupby(["model", "task"], sort=False):
        line = (
            f"- {model} · {task}: lr {_values(group['lr'])}, LoRA r {_values(group['lora_rank'])} "
            f"α {_values(group['lora_alpha'])}, batch {_values(group['batch'])}, "
            f"{_values(group['local_epochs'])} local epoch(s), {_values(group['rounds'])} rounds, "
            f"FM evaluated every {_values(group['eval_every'])} round(s) and at the last"
        )
        if not group["eval_round_zero"].any():
            line += " (not the untrained model of round 0: with a seed, every method's and partition's is the same)"
        if (task in TEXT_TASKS or task in LM_TASKS) and group["max_length"].notna().any():
            line += f", at most {_values(group['max_length'])} tokens"
        if group["align_t"].notna().any():
            line += f"; alignment every t = {_values(group['align_t'])} rounds, p = {_values(group['align_p'])}"
        lines.append(line)
    return lines


def untuned_lines(runs: pd.DataFrame) -> list[str]:
    """One line per model · task of causal-LM runs that evaluated round 0 (cells.untuned_fm)."""
    return [
        f"- {u['model']} · {u['task']}, the untuned FM (round 0, evaluated in {u['where']}): {u['measures']}"
        for u in untuned_fm(runs)
    ]


def render_block(
    root: Path, table: str, block: str, runs: pd.DataFrame, cells: pd.DataFrame, judged: list, plan: pd.DataFrame | None
) -> str:
    """One block of a table: header line(s) with the table's note, cells, the rows' settings and judged claims (the
    paper's, or our hypotheses beyond the paper); the BBC block under its own sub-heading. `plan` is the block's part
    of the table's plan.tsv (None without one); a block that is planned but has no runs yet shows its header only."""
    lines = [BBC_HEADING, ""] if block == "bbc" else []
    own = runs[(runs["table"] == table) & (runs["task"].map(block_of) == block)]
    lines.append(header_line(root, table, own, int((cells["shared_from"] != "").sum()), plan))
    if cells.empty:
        return "\n".join(lines)
    lines += [TABLE_NOTES[table]] if table in TABLE_NOTES else []
    lines += [test_line(judged)] if judged else []
    lines += ["", cells_markdown(table, cells)]
    if not own.empty:
        lines += ["", "Settings of each row's runs:", *settings_lines(own.sort_values(["model", "task"]))]
        untuned = untuned_lines(own)  # in model · task order, as untuned_fm sorts
        lines += ["", "Before tuning (the reference each row is read against):", *untuned] if untuned else []
    if judged:
        whose = "Orderings we hypothesise (not the paper's claims)" if all(j["ours"] for j in judged) else ""
        lines += ["", f"{whose or 'Orderings the paper claims'}, each link judged on paired per-seed differences:"]
        lines += [claim_line(j) for j in judged]
    return "\n".join(lines)


def render_table(root: Path, table: str, runs: pd.DataFrame, stats: pd.DataFrame) -> str:
    """One table as markdown: title, then per block (main, then BBC) header, cells and judged claims; or a note."""
    number = table.removeprefix("table")
    plan = load_plan(root, table)
    planned = set() if plan is None else set(plan["task"].map(block_of))
    if not (runs["table"] == table).any() and not planned:
        return f"_Table {number}: no runs under `{root / table}`, skipped._"
    cells = table_cells(stats, table)
    judged, blocks = orderings(cells, table), cells["task"].map(block_of)
    parts = [f"### {TABLE_TITLES.get(table, table)}"]
    for block in (b for b in BLOCKS if (blocks == b).any() or b in planned):
        block_judged = [j for j in judged if j["block"] == block]
        block_plan = None if plan is None else plan[plan["task"].map(block_of) == block]
        parts.append(render_block(root, table, block, runs, cells[blocks == block], block_judged, block_plan))
    return "\n\n".join(parts)


LEGEND = (
    "FM accuracy in %, mean ± sample std over the finished seeds (n); final = last round, best = best evaluated "
    "round ≥ 1 (round 0 is the untrained model) with the range of the runs' best rounds; one-class runs = finished "
    "runs whose final evaluation predicted a single class, of those whose predictions were recorded (– = not recorded). "
    "paper % = the paper's reported number for the analogous cell (spec §7; wiki-topics and bbc ≈ SST-2, wiki-pairs "
    "and bbc-pairs ≈ QNLI), not ours. MB = 1e6 bytes sent + received during training; model shipping = the one-time "
    "cost of sending the client model to every client; client params in Mi = 2**20 encoder-layer parameters. "
    "Header: runs found and finished, of the runs the table script was asked for (its plan.tsv), naming those not "
    "finished. "
    "Orderings: runs with the same seed share the partition and every client draw, so each link A > B is a paired "
    "t-test on the per-seed differences A_s − B_s of final-round accuracy over the seeds both cells finished: Δ = mean "
    "difference in points, [95 % t-interval], n common seeds, two-sided p, and Holm p = Holm's step-down correction "
    "across the testable links of the block (family-wise α = 0.05). A strict link (>) is *held* when Holm p ≤ 0.05 "
    "and Δ > 0, *contradicted* when Holm p ≤ 0.05 and Δ < 0, *inconclusive* otherwise; a tie-allowing link (≥) is "
    "*consistent* unless contradicted; one common seed is inconclusive; a link touching a cell whose every run "
    "predicted one class is *untestable* and leaves the family. A claim is untestable or n/a (a missing cell) if any "
    "link is, else contradicted if any link is, held if every > link is held and every ≥ link consistent, else "
    "inconclusive. [paper: …] is the same ordering judged on the paper's own numbers. † = the cell shows Table 1's "
    "runs of the same training (its table skips them when Table 1 has them; only when they are evaluated differs, "
    "which changes no final number). The BBC block of each table holds the earlier proxy tasks and is its own family."
)


CEILING_HEADING = (
    "#### Ceilings — one centralised LoRA fine-tune of the FM per task (a single client taking part in every round: "
    "each round one epoch over the whole training split; the tables' LoRA, learning rate and batch)"
)


def render_ceilings(runs: pd.DataFrame) -> str:
    """The ceiling runs (<root>/ceiling/<model>/<task>/centralised/FedPETuning/...) as a small table: what the FM
    reaches on each task when all data sit in one place, so a reader sees a task is neither trivial nor out of
    reach. Empty when there are none."""
    done = runs[(runs["table"] == "ceiling") & runs["finished"]]
    if done.empty:
        return ""
    head = ["model", "task", "epochs", "final acc %", "best acc % (epoch)", "seed", "one class"]
    rows = []
    keys = [display_order(done[c], k) for c, k in (("model", MODELS), ("task", TASKS))]
    for i in sorted(range(len(done)), key=lambda i: [k.iloc[i] for k in keys]):
        run = done.iloc[i]
        best = f"{fmt(run['best'] * 100)} ({fmt(run['best_round'], '.0f')})"
        one = "–" if run["one_class"] is None else ("yes" if run["one_class"] else "no")
        rows.append(
            [
                run["model"],
                task_label(run["task"]),
                fmt(run["rounds"], ".0f"),
                fmt(run["final"] * 100),
                best,
                fmt(run["seed"], ".0f"),
                one,
            ]
        )
    return f"{CEILING_HEADING}\n\n{markdown_table(head, rows)}"


def render(root: str | Path, runs: pd.DataFrame, tables: list[str]) -> str:
    """The requested tables as one markdown text, preceded by the legend; the ceilings follow Table 1."""
    stats = cell_stats(runs)
    parts = [LEGEND]
    for table in tables:
        parts.append(render_table(Path(root), table, runs, stats))
        if table == "table1" and (ceilings := render_ceilings(runs)):
            parts.append(ceilings)
    return "\n\n".join(parts) + "\n"
