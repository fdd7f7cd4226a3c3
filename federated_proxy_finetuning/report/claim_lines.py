"""The judged claims in words, from the verdicts of cells.orderings only: one line per claim under each block of a
table (claim_line), the block's test line naming its Holm family and any links paired on fewer seeds (test_line),
and one sentence per claim for the results page and the README (verdict_bullets)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from federated_proxy_finetuning.report.cells import cell_stats, orderings, table_cells, untuned_fm
from federated_proxy_finetuning.report.paper import SETTING_LABELS
from federated_proxy_finetuning.report.runs import load_plan, planned_not_finished
from federated_proxy_finetuning.report.verdicts import ALPHA, format_p


def seed_list(seeds) -> str:
    """Seeds as text: "1–5" for a consecutive run, else "1 2 4"."""
    seeds = sorted(int(s) for s in seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return " ".join(map(str, seeds))


def _where(judged: dict) -> str:
    return " · ".join(
        SETTING_LABELS.get(judged[c], judged[c]) if c == "setting" else judged[c]
        for c in ("model", "task", "setting", "method")
        if c in judged
    )


def claim_text(judged: dict) -> str:
    """The claim as the lines name it, marked where its measure is better lower (a loss) and where it is our
    hypothesis rather than the paper's claim."""
    notes = ["lower is better"] if judged["measure"].better < 0 else []
    notes += ["our hypothesis, not the paper's"] if judged["ours"] else []
    return judged["claim"] + (f" ({'; '.join(notes)})" if notes else "")


def _link_text(link: dict, means: dict[str, float]) -> str:
    """e.g. "FedPFT 59.0 > FedOT 53.9: Δ +5.1 [−3.2, +13.4], n=3, p=0.12, Holm p=0.60 → inconclusive" (values and
    differences to the link's measure's decimals). The values are the cells' means; where the two cells have different
    seed sets, the means over the seeds the link is paired on, which those seeds name, so that Δ is their difference."""
    (a, op, b), (label_a, _, label_b), digits = link["link"], link["text"], link["measure"].digits
    head = f"{label_a} {op} {label_b}"
    if not link["missing"]:
        value_a, value_b, on = means[a], means[b], ""
        if link["seeds"] and link["seed_sets"][0] != link["seed_sets"][1]:
            (value_a, value_b), on = link["paired_means"], f" (seeds {seed_list(link['seeds'])})"
        head = f"{label_a} {value_a:.{digits}f} {op} {label_b} {value_b:.{digits}f}{on}"
    test, verdict = link["test"], link["verdict"] + (f" ({link['reason']})" if link["reason"] else "")
    if test.n == 0:
        return f"{head}: {verdict}"
    numbers = [f"Δ {test.interval_text(digits)}", f"n={test.n}"] + (
        [f"p={format_p(test.p)}"] if test.p is not None else []
    )
    numbers += [f"Holm p={format_p(link['holm_p'])}"] if link["holm_p"] is not None else []
    return f"{head}: {', '.join(numbers)} → {verdict}"


def claim_line(judged: dict) -> str:
    verdict = f"**{judged['verdict']}**"
    if judged["verdict"] == "n/a":
        verdict = f"n/a (missing: {', '.join(judged['missing'])})"
    detail = "; ".join(_link_text(link, judged["means"]) for link in judged["links"])
    paper = ", ".join(f"{row} {v}" for row, v in judged["paper"].items())
    return f"- {_where(judged)}: {claim_text(judged)} — {verdict}: {detail}" + (f" [paper: {paper}]" if paper else "")


def pairing_notes(judged: list[dict]) -> list[str]:
    """One note per link whose two cells have different seed sets, naming the seeds it is paired on."""
    notes = []
    for j in judged:
        for link in j["links"]:
            (seeds_a, seeds_b), (label_a, _, label_b) = link["seed_sets"], link["text"]
            if seeds_a and seeds_b and seeds_a != seeds_b:
                note = f"{_where(j)}: {label_a} has seeds {seed_list(seeds_a)}, {label_b} {seed_list(seeds_b)}"
                notes.append(f"{note} → paired on {' '.join(map(str, link['seeds'])) or 'none'}")
    return list(dict.fromkeys(notes))


def test_line(judged: list[dict]) -> str:
    """The rule the block's orderings are judged by (on which measures), its Holm family size m and any unequal seed
    sets."""
    links = [link for j in judged for link in j["links"]]
    m, untestable = judged[0]["m"], sum(link["verdict"] == "untestable" for link in links)
    measures = " and of ".join(dict.fromkeys(j["measure"].described() for j in judged))
    line = (
        f"Orderings: paired t-test on the per-seed differences of {measures} (95 % t-interval, two-sided p), "
        f"Holm's correction across the m = {m} testable links of this block at family-wise α = {ALPHA:g}"
    )
    line += f" ({untestable} untestable link(s) left out)" if untestable else ""
    notes = pairing_notes(judged)
    if notes:
        line += "; links whose cells have different seed sets are paired on the seeds both have: " + "; ".join(notes)
    return line + "."


def _bullet_link(link: dict) -> str:
    """e.g. "FedPFT − FedOT +5.1 [−3.2, +13.4] (inconclusive, Holm p 0.60)"."""
    (label_a, _, label_b), test, digits = link["text"], link["test"], link["measure"].digits
    name = f"{label_a} − {label_b}"
    if test.n == 0:
        return f"{name}: {link['verdict']} ({link['reason']})"
    why = [link["reason"]] if link["reason"] else []
    shown = link["holm_p"] is not None and (link["link"][1] == ">" or link["verdict"] == "contradicted")
    why += [f"Holm p {format_p(link['holm_p'])}"] if shown else []
    return f"{name} {test.interval_text(digits)} ({', '.join([link['verdict'], *why])})"


def verdict_bullet(judged: dict) -> str:
    """One markdown sentence on a judged claim, generated from its verdict data only."""
    block = " (BBC block)" if judged["block"] == "bbc" else ""
    ns = sorted({link["test"].n for link in judged["links"] if link["test"].n})
    seeds = f"{ns[0]}–{ns[-1]} common seeds" if len(ns) > 1 else f"{ns[0]} seed{'s' * (ns[0] != 1)}" if ns else ""
    text = f"- Table {judged['table'].removeprefix('table')}{block}, {_where(judged)}: {claim_text(judged)} is "
    text += f"**{judged['verdict']}**: " + ", ".join(_bullet_link(link) for link in judged["links"])
    text += f"; {seeds}." if seeds else "."
    held = [row for row, v in judged["paper"].items() if v == "held"]
    failed = [row for row in judged["paper"] if row not in held]
    if held and failed:
        text += f" The paper's numbers hold it for {', '.join(held)}, not for {', '.join(failed)}."
    elif judged["paper"]:
        text += f" The paper's numbers {'hold' if held else 'do not hold'} it ({', '.join(held or failed)})."
    return text


def verdict_bullets(root: str | Path, runs: pd.DataFrame, tables: list[str]) -> str:
    """One markdown bullet per judged claim of the requested tables, in plain words, from the same verdicts the
    tables print (so that prose quoting them cannot drift from the tables), after one bullet per table whose plan
    (<root>/<table>/plan.tsv) has runs not finished; tables without runs are skipped. Last, per causal-LM table, the
    untuned FM's measures (cells.untuned_fm)."""
    stats = cell_stats(runs)
    notes = []
    for table in tables:
        plan = load_plan(root, table)
        missing = 0 if plan is None else len(planned_not_finished(plan, runs[runs["table"] == table]))
        if missing:
            notes.append(
                f"- **Table {table.removeprefix('table')} is not complete**: {missing} of its {len(plan)} planned "
                "runs have not finished, and its verdicts can change as they arrive."
            )
    judged = [j for t in tables if (runs["table"] == t).any() for j in orderings(table_cells(stats, t), t)]
    references = [
        f"- Table {t.removeprefix('table')}, {u['model']} · {u['task']}: the untuned FM (round 0) scores "
        f"{u['measures']}, the reference each method's row is read against."
        for t in tables
        for u in untuned_fm(runs[runs["table"] == t])
    ]
    return "\n".join(notes + [verdict_bullet(j) for j in judged] + references) + "\n"
