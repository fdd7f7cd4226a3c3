"""Cell statistics and the judged claims: per cell of a table the means, sample stds and per-seed finals of its
finished runs (cell_stats), the cells of one table in display order with those it shares with Table 1
(table_cells), and every ordering the paper claims (or, beyond the paper, we hypothesise) judged on paired per-seed
differences of its measure, one Holm family per block of a table (orderings, with the tests of verdicts.py)."""

from __future__ import annotations

import pandas as pd

from federated_proxy_finetuning.report.measures import MEASURES, Measure
from federated_proxy_finetuning.report.paper import (
    BLOCKS,
    CLAIMS,
    METHODS,
    MODELS,
    SETTINGS,
    SHARED_WITH_TABLE1,
    TASKS,
    block_of,
    display_order,
    paper_verdicts,
)
from federated_proxy_finetuning.report.runs import CELL
from federated_proxy_finetuning.report.verdicts import claim_verdict, judge_family, paired_t


def cell_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: n finished runs, unfinished count, mean and sample std of final and best accuracy (%) and, for
    causal-LM runs, of the final answer loss and perplexity (NaN otherwise), client parameters (Mi = 2**20), MB
    communicated per run (1 MB = 1e6 bytes) and model shipping MB, plus the columns of cell_seeds. Means use finished
    runs only; the parameter count, a property of the configuration, uses every run."""
    done = runs[runs["finished"]].groupby(CELL)
    stats = pd.DataFrame(
        {
            "n": done.size(),
            "final_mean": done["final"].mean() * 100,
            "final_std": done["final"].std() * 100,
            "best_mean": done["best"].mean() * 100,
            "best_std": done["best"].std() * 100,
            "loss_mean": done["final_loss"].mean(),
            "loss_std": done["final_loss"].std(),
            "ppl_mean": done["final_perplexity"].mean(),
            "ppl_std": done["final_perplexity"].std(),
            "mb_per_run": done["bytes_total"].mean() / 1e6,
            "shipping_mb": done["shipping_bytes"].mean() / 1e6,
        }
    )
    every = runs.groupby(CELL)
    extra = pd.DataFrame(
        {
            "unfinished": every["finished"].apply(lambda f: int((~f).sum())),
            "client_params_mi": every["client_params"].mean() / 2**20,
        }
    )
    stats = stats.join(extra, how="outer")
    stats[["n", "unfinished"]] = stats[["n", "unfinished"]].fillna(0).astype(int)
    stats["shared_from"] = ""
    stats = stats.reset_index()
    per_cell = {key: cell_seeds(group) for key, group in runs[runs["finished"]].groupby(CELL)}
    for column, empty in cell_seeds(runs.iloc[:0]).items():
        values = [per_cell.get(key, {}).get(column, empty) for key in stats[CELL].itertuples(index=False, name=None)]
        stats[column] = pd.Series(values, index=stats.index, dtype=object)
    known = stats["one_class_known"] == stats["n"]
    stats["untestable"] = (stats["n"] > 0) & known & (stats["one_class_runs"] == stats["n"])
    return stats


def cell_seeds(done: pd.DataFrame) -> dict:
    """Per-seed facts of one cell's finished runs: per measure of MEASURES its {seed: value} (the paired tests'
    data: finals = final accuracy %, loss_finals = final answer loss), one_class_runs / one_class_known (runs whose
    final evaluation predicted one class / whose predictions were recorded) and best_rounds (the range of the runs'
    best rounds, e.g. "12–30")."""
    known = done["one_class"].dropna()
    rounds = sorted(done["best_round"].dropna().astype(int).unique())
    per_seed = {}
    for measure in MEASURES:
        usable = done.dropna(subset=["seed", measure.column])
        per_seed[measure.seeds] = dict(zip(usable["seed"].astype(int), usable[measure.column] * measure.scale))
    return {
        **per_seed,
        "one_class_runs": int(known.astype(bool).sum()),
        "one_class_known": len(known),
        "best_rounds": "–".join(str(r) for r in dict.fromkeys(rounds[:1] + rounds[-1:])),
    }


def table_cells(stats: pd.DataFrame, table: str) -> pd.DataFrame:
    """The cells of one table in display order, adding Table 1 cells a table shares (SHARED_WITH_TABLE1) where its
    own folder lacks them, for the models and tasks the table has."""
    own = stats[stats["table"] == table]
    borrowed = []
    for model, task in own[["model", "task"]].drop_duplicates().itertuples(index=False):
        have = own[(own["model"] == model) & (own["task"] == task)]
        for shared_table, setting, method in SHARED_WITH_TABLE1:
            if shared_table != table or ((have["setting"] == setting) & (have["method"] == method)).any():
                continue
            source = stats[
                (stats[CELL[:4]] == ["table1", model, task, "iid"]).all(axis=1) & (stats["method"] == method)
            ]
            borrowed.append(source.assign(table=table, setting=setting, shared_from="table1"))
    cells = pd.concat([own, *borrowed], ignore_index=True)
    keys = [display_order(cells[c], k) for c, k in zip(CELL[1:], (MODELS, TASKS, SETTINGS, METHODS))]
    order = sorted(range(len(cells)), key=lambda i: [k.iloc[i] for k in keys])
    return cells.iloc[order].reset_index(drop=True)


def measure_link(a: pd.Series | None, b: pd.Series | None, names: tuple[str, str], measure: Measure) -> dict:
    """The paired t-test of cell a against cell b (named `names`) on the seeds both have finished: per-seed
    differences A_s - B_s of `measure` (final-round accuracy in percentage points, answer loss in nats). A cell whose
    every run predicted one class makes the link untestable only on a measure that it spoils (an accuracy)."""
    present = [c is not None and c["n"] > 0 for c in (a, b)]
    finals = [c[measure.seeds] if ok else {} for c, ok in zip((a, b), present)]
    seeds = sorted(set(finals[0]) & set(finals[1]))
    return {
        "test": paired_t([finals[0][s] - finals[1][s] for s in seeds]),
        "seeds": seeds,
        "seed_sets": (sorted(finals[0]), sorted(finals[1])),
        "paired_means": tuple(sum(f[s] for s in seeds) / len(seeds) if seeds else None for f in finals),
        "missing": [name for name, ok in zip(names, present) if not ok],
        "one_class": [
            name for name, c, ok in zip(names, (a, b), present) if ok and c["untestable"] and measure.one_class
        ],
        "measure": measure,
    }


def _claim_groups(cells: pd.DataFrame, table: str):
    """(claim, {fixed coordinate: value}, {name: cell}) for every claim of `table` and group of its cells."""
    for claim in CLAIMS.get(table, ()):
        fixed = [c for c in ("model", "task", "setting", "method") if c != claim.varies]
        names = {x for a, _, b in claim.links for x in (a, b)}
        for key, group in cells.groupby(fixed, sort=False):
            if names & set(group[claim.varies]):
                yield claim, dict(zip(fixed, key)), {row[claim.varies]: row for _, row in group.iterrows()}


def _judge_block(cells: pd.DataFrame, table: str, block: str) -> list[dict]:
    """The claims of one block of `table`, its links Holm-corrected as one family (judge_family)."""
    judged = []
    for claim, where, by_name in _claim_groups(cells, table):
        names = {x for a, _, b in claim.links for x in (a, b)}
        links = [
            {"link": (a, op, b), "text": (claim.label(a), op, claim.label(b))}
            | measure_link(by_name.get(a), by_name.get(b), (claim.label(a), claim.label(b)), claim.measure)
            for a, op, b in claim.links
        ]
        present = {n for n, r in by_name.items() if r["n"] > 0}
        judged.append(
            {"table": table, "block": block, **where, "claim": claim.text, "missing": sorted(names - present)}
            | {"links": links, "means": {n: by_name[n][claim.measure.mean] for n in names & present}}
            | {"measure": claim.measure, "ours": claim.ours, "paper": paper_verdicts(claim, table, where)}
        )
    family = [link for j in judged for link in j["links"]]
    outcomes = judge_family(
        [(link["link"][1], link["test"], bool(link["one_class"]), link["measure"].better) for link in family]
    )
    for link, (holm_p, verdict) in zip(family, outcomes):
        reason = verdict.reason
        if verdict.verdict == "untestable":
            reason = f"every run of {' and '.join(link['one_class'])} predicted one class"
        elif link["missing"]:
            reason = f"missing cell: {', '.join(link['missing'])}"
        link |= {"holm_p": holm_p, "verdict": verdict.verdict, "reason": reason}
    for j in judged:
        j["verdict"] = claim_verdict([(link["link"][1], link["verdict"]) for link in j["links"]])
        j["m"] = sum(link["holm_p"] is not None for link in family)
    return judged


def orderings(cells: pd.DataFrame, table: str) -> list[dict]:
    """Every claim of `table` judged in every group of its cells (see Claim; cells from table_cells): per link the
    paired test on common seeds (measure_link), its Holm p within the link's block and its verdict; per claim the
    combined verdict (claim_verdict), the block's family size m and the paper's verdicts."""
    blocks = cells["task"].map(block_of)
    return [j for block in BLOCKS for j in _judge_block(cells[blocks == block], table, block)]


def _agreeing(values: pd.Series, spec: str, scale: float = 1.0) -> str:
    """One value where the runs agree to the printed precision, else its range over them."""
    low, high = format(values.min() * scale, spec), format(values.max() * scale, spec)
    return low if low == high else f"{low}–{high} (differs across runs)"


def untuned_fm(runs: pd.DataFrame) -> list[dict]:
    """Per model · task of causal-LM runs that evaluated round 0, the untuned FM: the same model for every method
    and seed, so the reference each row's tuning is read against. Each entry: model, task, where (the runs that
    evaluated it) and measures (its topic accuracy, answer loss and perplexity as text; a range where the runs
    disagree, as they would on different evaluation sets). No entry for classifiers, whose round 0 is an untrained
    head."""
    from federated_proxy_finetuning.tasks import LM_TASKS  # the instruction -> answer tasks

    found = []
    for (model, task), group in runs.sort_values(["model", "task"]).groupby(["model", "task"], sort=False):
        zero = group[group["round0"].notna()].sort_values(["method", "seed"])
        if task not in LM_TASKS or zero.empty:
            continue
        measures = (
            f"topic acc {_agreeing(zero['round0'], '.1f', 100)} %, answer loss {_agreeing(zero['round0_loss'], '.3f')}"
            f", perplexity {_agreeing(zero['round0_perplexity'], '.2f')}"
        )
        where = ", ".join(f"{r['method']} seed {int(r['seed'])}" for _, r in zero.iterrows())
        found.append({"model": model, "task": task, "where": where, "measures": measures})
    return found
