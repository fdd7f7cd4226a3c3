"""The report package (federated_proxy_finetuning/report/: tables, verdicts, pages, figures) and its command lines
scripts/make_tables.py and scripts/plot_results.py:
hand-computed paired t-intervals, p-values and Holm adjustments; on a hand-written result tree the means and sample
stds, unfinished runs, missing optional fields, the best round ≥ 1, the one-class reading of confusion matrices, the
paper's numbers beside the right cells, the claimed orderings judged on paired per-seed differences (held,
contradicted, inconclusive, consistent, untestable, n/a), the two blocks of a table, the generated verdict bullets,
the missing-root error, the PNG files and one CLI run of each; Table 5 (a decoder LLM, beyond the paper) with its
topic accuracy, answer loss and perplexity, its orderings judged with the loss's direction (lower is better) and its
curves; and the verdicts recomputed from the committed runs under results/embedded."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from federated_proxy_finetuning.report.cells import cell_stats, orderings, table_cells, untuned_fm
from federated_proxy_finetuning.report.claim_lines import verdict_bullets
from federated_proxy_finetuning.report.figures import alignment_rounds, method_curves, on_common_seeds, write_plots
from federated_proxy_finetuning.report.markdown import CEILING_HEADING, LEGEND, render
from federated_proxy_finetuning.report.measures import ACCURACY, ANSWER_LOSS
from federated_proxy_finetuning.report.pages import (
    GENERATED,
    readme_block,
    replace_generated,
    results_page,
    write_pages,
)
from federated_proxy_finetuning.report.paper import (
    BBC_HEADING,
    CLAIMS,
    MODELS,
    PAPER_TASK,
    TABLE_TITLES,
    TABLES,
    TASKS,
    block_of,
    paper_numbers,
    reported_tables,
)
from federated_proxy_finetuning.report.runs import CELL, load_runs, predictions, read_metrics, run_record
from federated_proxy_finetuning.report.verdicts import (
    PairedTest,
    claim_verdict,
    format_p,
    holm,
    judge_family,
    link_verdict,
    paired_t,
)
from scripts import make_tables, plot_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ROUNDS, CLIENTS, PROPORTION = 4, 20, 0.2
SENT, RECEIVED, SHIPPING = 1_000_000, 500_000, 10_000_000  # bytes per trained round, one-time model shipping


def write_run(
    root: Path,
    cell: str,
    seed: int,
    final: float,
    finished: bool = True,
    bare: bool = False,
    confusion: list[list[int]] | None = None,
    loss: float | None = None,
    client_mi: float = 47,
) -> Path:
    """A run folder of cell "<table>/<model>/<task>/<setting>/<method>" whose FM accuracy climbs from 0.5 to
    `final` + 0.01 at round ROUNDS - 1 (the best round) and ends at `final`. `bare`: an older run without the
    optional fields (no parameter counts, communication, wall time, byte counters). `confusion`: the final round's
    eval_confusion (rows true label, columns predicted label); none recorded when None, as in older runs. `loss`: a
    causal-LM run (Table 5): its metric is eval_topic_accuracy and every evaluation also holds the answer loss,
    falling by 0.1 a round to `loss` at round ROUNDS, and its exp, eval_perplexity. `client_mi`: client parameters
    in Mi."""
    table, model, task, setting, method = cell.split("/")
    metric = "eval_accuracy" if loss is None else "eval_topic_accuracy"
    run = root / cell / task / model / f"{method.lower()}-r{ROUNDS}-seed{seed}"
    run.mkdir(parents=True)
    best = final + 0.01
    accuracy = [0.5 + (best - 0.5) * r / (ROUNDS - 1) for r in range(ROUNDS)] + [final]
    records = []
    for r, acc in enumerate(accuracy):
        fm = {metric: acc, "eval_loss": 1 - acc}
        if loss is not None:
            fm |= {"eval_loss": loss + 0.1 * (ROUNDS - r), "eval_perplexity": math.exp(loss + 0.1 * (ROUNDS - r))}
        record = {"round": r, "fm": fm, "aligned": method == "FedPFT" and r % 2 == 0 and r > 0}
        if confusion is not None and r == ROUNDS:
            record["fm"]["eval_confusion"] = confusion
        if not bare:
            record |= {"bytes_sent": SENT * (r > 0), "bytes_received": RECEIVED * (r > 0)}
            record |= {"bytes_sent_cumulative": SENT * r, "bytes_received_cumulative": RECEIVED * r}
        records.append(record)
    write_metrics(run, records)
    args = {"seed": seed, "num_rounds": ROUNDS, "num_clients": CLIENTS, "proportion": PROPORTION, "method": "pft"}
    config = {"args": args, "metric_for_best_model": metric.removeprefix("eval_")}
    if not bare:
        config |= {"client_encoder_layer_parameters": client_mi * 2**20, "fm_encoder_layer_parameters": 81 * 2**20}
    (run / "config.json").write_text(json.dumps(config))
    summary = {"metric": metric, "finished": finished, "method": method, "final_round": ROUNDS}
    summary |= {"final": {metric: final}, "best_round": ROUNDS - 1, "best": {metric: best}}
    if loss is not None:
        summary["final"] |= {"eval_loss": loss, "eval_perplexity": math.exp(loss)}
    summary |= {"best_metric": best}
    if not bare:
        communication = {
            "bytes_sent": SENT * ROUNDS,
            "bytes_received": RECEIVED * ROUNDS,
            "model_shipping_bytes": SHIPPING,
        }
        summary |= {"rounds": ROUNDS, "communication": communication, "wall_seconds": 12.5}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def write_metrics(run: Path, records: list[dict]) -> None:
    """A run folder's metrics.jsonl (read back with runs.read_metrics)."""
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


def write_cell(root: Path, cell: str, finals: list[float]) -> None:
    for seed, final in enumerate(finals, start=1):
        write_run(root, cell, seed, final)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results") / "embedded"
    # Table 1: bbc holds FedPETuning ≥ FedPFT > FedOT (FedPETuning has seeds 1-3, FedPFT 1-2: paired on 1 2), the
    # bbc-pairs FedPFT > FedOT link is contradicted
    write_cell(root, "table1/minilm/bbc/iid/FedPETuning", [0.90, 0.92, 0.88])  # 90.0 ± 2.0
    write_cell(root, "table1/minilm/bbc/iid/FedPFT", [0.88, 0.90])  # 89.0 ± 1.414
    write_run(root, "table1/minilm/bbc/iid/FedPFT", 3, 0.10, finished=False)  # excluded
    write_cell(root, "table1/minilm/bbc/iid/FedOT", [0.80, 0.82])  # 81.0 ± 1.414
    write_run(root, "table1/minilm/bbc/iid/FedOT-noKD", 1, 0.75, bare=True)
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedPETuning", [0.70, 0.72])
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedPFT", [0.60, 0.62])  # 61.0 < FedOT's 67.0
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedOT", [0.66, 0.68])
    # Table 2: α=1 with one seed each (inconclusive), α=5 lacks FedOT (n/a)
    write_cell(root, "table2/minilm/bbc/dir1/FedPETuning", [0.85])
    write_cell(root, "table2/minilm/bbc/dir1/FedPFT", [0.86])
    write_cell(root, "table2/minilm/bbc/dir1/FedOT", [0.80])
    write_cell(root, "table2/minilm/bbc/dir5/FedPETuning", [0.87])
    write_cell(root, "table2/minilm/bbc/dir5/FedPFT", [0.86])
    # Table 3: minilm holds FedPFT > B > D > N; FedOT comes from Table 1 (67.0 < FedPFT's 69.0); mpnet inverts.
    # Every paired difference in these cells is the same for both seeds (sd 0): p = 0, held or contradicted
    write_cell(root, "table3/minilm/bbc-pairs/iid/FedPFT", [0.68, 0.70])
    write_cell(root, "table3/minilm/bbc-pairs/iid/FedPFT_B", [0.63, 0.65])
    write_cell(root, "table3/minilm/bbc-pairs/iid/FedPFT_D", [0.59, 0.61])
    write_cell(root, "table3/minilm/bbc-pairs/iid/FedPFT_N", [0.55, 0.57])
    write_cell(root, "table3/mpnet/bbc-pairs/iid/FedPFT", [0.55, 0.57])
    write_cell(root, "table3/mpnet/bbc-pairs/iid/FedPFT_B", [0.63, 0.65])
    write_cell(root, "table3/mpnet/bbc-pairs/iid/FedPFT_D", [0.59, 0.61])
    write_cell(root, "table3/mpnet/bbc-pairs/iid/FedPFT_N", [0.68, 0.70])
    write_cell(root, "table3/mpnet/bbc-pairs/iid/FedOT", [0.70, 0.72])
    # Table 4: t=10 is the best t; p=0.3 beats p=0.5
    for setting, final in {"t5": 0.66, "t10": 0.69, "t20": 0.64, "p0.3": 0.72, "p0.8": 0.60}.items():
        write_cell(root, f"table4/minilm/bbc-pairs/{setting}/FedPFT", [final - 0.01, final + 0.01])
    return root


@pytest.fixture(scope="module")
def runs(tree):
    return load_runs(tree)


def cell(stats, table: str, model: str, task: str, setting: str, method: str):
    found = stats[(stats[CELL] == [table, model, task, setting, method]).all(axis=1)]
    assert len(found) == 1
    return found.iloc[0]


def judged(tree, runs, table: str, **where) -> dict[str, dict]:
    cells = table_cells(cell_stats(runs), table)
    found = [j for j in orderings(cells, table) if all(j.get(k) == v for k, v in where.items())]
    return {j["claim"]: j for j in found}


def test_load_runs_reads_every_run(runs):
    assert len(runs) == 15 + 5 + 18 + 10
    assert int((~runs["finished"]).sum()) == 1
    bare = runs[runs["method"] == "FedOT-noKD"].iloc[0]
    assert bare["seed"] == 1 and bare["rounds"] == ROUNDS and bare["final"] == 0.75
    assert all(bare[k] != bare[k] for k in ("client_params", "bytes_total", "shipping_bytes", "wall_seconds"))  # NaN


def test_cell_stats_means_and_sample_stds(runs):
    stats = cell_stats(runs)
    peft = cell(stats, "table1", "minilm", "bbc", "iid", "FedPETuning")
    assert peft["n"] == 3 and peft["unfinished"] == 0
    assert peft["final_mean"] == pytest.approx(90.0) and peft["final_std"] == pytest.approx(2.0)
    assert peft["best_mean"] == pytest.approx(91.0) and peft["best_std"] == pytest.approx(2.0)
    assert peft["client_params_mi"] == pytest.approx(47.0)
    assert peft["mb_per_run"] == pytest.approx((SENT + RECEIVED) * ROUNDS / 1e6)
    assert peft["shipping_mb"] == pytest.approx(SHIPPING / 1e6)
    fedpft = cell(stats, "table1", "minilm", "bbc", "iid", "FedPFT")  # the unfinished seed's 10% is left out
    assert (fedpft["n"], fedpft["unfinished"]) == (2, 1)
    assert fedpft["final_mean"] == pytest.approx(89.0) and fedpft["final_std"] == pytest.approx(2**0.5)
    single = cell(stats, "table2", "minilm", "bbc", "dir1", "FedPFT")
    assert single["n"] == 1 and single["final_std"] != single["final_std"]  # NaN: no sample std from one seed


def test_markdown_cells_paper_numbers_and_missing_fields(tree, runs):
    text = render(tree, runs, ["table1", "table3", "table4"])
    rows = {
        tuple(c.strip() for c in line.split("|")[1:5]): line
        for line in text.splitlines()
        if line.startswith("| minilm")
    }
    fedpft = rows["minilm", "bbc (≈ SST-2)", "IID", "FedPFT"]
    assert "89.0 ± 1.4 (n=2, 1 unfinished)" in fedpft and "90.0 ± 1.4" in fedpft  # final; best
    assert "BERT 91.6 · RoBERTa 93.1" in fedpft and "| 47.0 " in fedpft and "| 6.0 " in fedpft and "| 10.0 " in fedpft
    assert "90.0 ± 2.0 (n=3)" in rows["minilm", "bbc (≈ SST-2)", "IID", "FedPETuning"]
    assert "BERT 83.9 · RoBERTa 85.3" in rows["minilm", "bbc-pairs (≈ QNLI)", "IID", "FedOT"]
    no_kd = rows["minilm", "bbc (≈ SST-2)", "IID", "FedOT-noKD"].split("|")
    assert (
        no_kd[5].strip() == "75.0 (n=1)" and [c.strip() for c in no_kd[7:12]] == ["–"] * 5
    )  # one-class status not recorded, no paper number, no optional fields
    assert "90.0 ± 1.4 (round 3)" in fedpft and "| 47.0 " in fedpft  # best round ≥ 1
    assert "BERT 86.9 · RoBERTa 86.7" in rows["minilm", "bbc-pairs (≈ QNLI)", "IID", "FedPFT_B"]  # Table 3
    assert "BERT 83.9 · RoBERTa 85.3" in rows["minilm", "bbc-pairs (≈ QNLI)", "IID †", "FedOT"]  # shared with Table 1
    assert "BERT 87.4 · RoBERTa 87.8" in rows["minilm", "bbc-pairs (≈ QNLI)", "p=0.3", "FedPFT"]  # Table 4
    assert "`table1`: 15 runs found, 14 finished; seeds 1/2/3; rounds 4; clients 20, 0.2 of them per round" in text
    # 13 finished runs with a logged time of 12.5 s (the bare run has none, the unfinished one is left out)
    assert "of them per round; run time 3 min (13 runs, their round times summed)" in text.split("`table1`")[1]
    assert "`table3`: 18 runs found, 18 finished" in text and "cells shared with Table 1 (†): 1" in text


def write_plan(root: Path, table: str, lines: list[str]) -> None:
    """<root>/<table>/plan.tsv as common.sh's plan_run writes it: "model task setting method seed", tab-separated."""
    (root / table).mkdir(parents=True, exist_ok=True)
    (root / table / "plan.tsv").write_text("".join("\t".join(line.split()) + "\n" for line in lines))


def test_planned_runs_that_have_not_finished_are_named(tmp_path, caplog):
    write_cell(tmp_path, "table2/minilm/wiki-topics/dir1/FedPFT", [0.70, 0.72])
    write_run(tmp_path, "table2/minilm/wiki-topics/dir1/FedPFT", 3, 0.10, finished=False)
    write_cell(tmp_path, "table2/minilm/wiki-topics/dir1/FedOT", [0.60, 0.61, 0.62])
    plan = [f"minilm wiki-topics dir1 {m} {s}" for m in ("FedPFT", "FedOT") for s in (1, 2, 3)]
    plan += ["minilm wiki-topics dir1 FedOT 1"]  # a rerun records a run once; a duplicate counts once
    plan += [f"minilm wiki-pairs dir10 FedPETuning {s}" for s in (1, 2)]  # a cell with no run yet
    plan += [f"minilm bbc dir1 FedPFT {s}" for s in (1, 2, 3)]  # a block with no run yet
    write_plan(tmp_path, "table2", plan)
    write_cell(tmp_path, "table1/minilm/wiki-topics/iid/FedPFT", [0.70])
    write_plan(tmp_path, "table1", ["minilm wiki-topics iid FedPFT 1"])
    write_plan(tmp_path, "table4", ["minilm wiki-pairs t5 FedPFT 1"])  # planned, nothing run yet
    text = render(tmp_path, load_runs(tmp_path), ["table1", "table2", "table3", "table4"])
    table2 = text.split("### Table 2")[1].split("### Table 4")[0]
    main, bbc = table2.split(BBC_HEADING)
    assert (
        "`table2`: 6 runs found, 5 finished, of 8 planned (**3 not finished**: minilm · wiki-topics · α=1 · FedPFT "
        "seed 3; minilm · wiki-pairs · α=10 · FedPETuning seeds 1 2); seeds 1/2/3;"
    ) in main
    assert "`table2`: 0 runs found, 0 finished, of 3 planned (**3 not finished**: minilm · bbc · α=1 · FedPFT seeds " \
        "1 2 3)\n" in bbc + "\n" and "| minilm" not in bbc
    assert "`table1`: 1 runs found, 1 finished, of 1 planned; seeds 1;" in text
    assert "of 1 planned (**1 not finished**: minilm · wiki-pairs · t=5 · FedPFT seed 1)" in text.split("### Table 4")[1]
    assert "_Table 3: no runs under" in text  # neither runs nor a plan
    bullets = verdict_bullets(tmp_path, load_runs(tmp_path), ["table1", "table2", "table3", "table4"]).splitlines()
    assert bullets[:2] == [
        "- **Table 2 is not complete**: 6 of its 11 planned runs have not finished, and its verdicts can change as "
        "they arrive.",
        "- **Table 4 is not complete**: 1 of its 1 planned runs have not finished, and its verdicts can change as "
        "they arrive.",
    ]
    assert not any("Table 1 is not complete" in b for b in bullets)
    # a damaged plan is left out with a warning, as if there were none
    (tmp_path / "table1" / "plan.tsv").write_text("minilm wiki-topics iid FedPFT\n")
    text = render(tmp_path, load_runs(tmp_path), ["table1"])
    assert "`table1`: 1 runs found, 1 finished; seeds 1;" in text and "plan.tsv" in caplog.text


def test_table_scripts_record_their_plan(tmp_path):
    """plan_run (common.sh) records each run a table script is asked for, once, and nothing in a dry run."""
    common = SCRIPTS / "embedded" / "common.sh"
    script = (
        f'source "{common}"; plan_run table2 minilm bbc dir1 FedPFT 1; plan_run table2 minilm bbc dir1 FedPFT 1; '
        "plan_run table2 minilm bbc dir1 FedPFT 2; DRY_RUN=1 plan_run table2 minilm bbc dir1 FedOT 1"
    )
    env = {"PATH": "/usr/bin:/bin", "RESULTS": str(tmp_path)}
    subprocess.run(["bash", "-c", script], check=True, env=env, cwd=ROOT)
    assert (tmp_path / "table2" / "plan.tsv").read_text() == "minilm\tbbc\tdir1\tFedPFT\t1\nminilm\tbbc\tdir1\tFedPFT\t2\n"


def test_paper_layout_uses_the_same_model_row(tmp_path):
    write_cell(tmp_path, "table1/bert-base-uncased/qnli/iid/FedPFT", [0.86])
    write_cell(tmp_path, "table1/roberta-base/sst2/iid/FedOT", [0.91])
    text = render(tmp_path, load_runs(tmp_path), ["table1"])
    assert "| bert-base-uncased | qnli " in text and "| 87.5 " in text and "| 92.8 " in text and "BERT 87.5" not in text


def test_orderings_paired_verdicts(tree, runs):
    bbc = judged(tree, runs, "table1", task="bbc")["FedPETuning ≥ FedPFT > FedOT"]
    assert bbc["verdict"] == "held" and bbc["block"] == "bbc" and bbc["m"] == 4
    first, second = bbc["links"]  # paired on seeds 1 2: FedPFT's seed 3 is unfinished
    assert first["seeds"] == [1, 2] and first["seed_sets"] == ([1, 2, 3], [1, 2])
    assert first["test"].delta == pytest.approx(2.0) and first["test"].p == 0 and first["verdict"] == "consistent"
    assert second["test"].delta == pytest.approx(8.0) and second["verdict"] == "held"
    assert bbc["paper"] == {"BERT": "held", "RoBERTa": "held"}
    pairs = judged(tree, runs, "table1", task="bbc-pairs")["FedPETuning ≥ FedPFT > FedOT"]
    assert pairs["verdict"] == "contradicted"  # FedPFT 61.0 vs FedOT 67.0 on both seeds
    assert [link["verdict"] for link in pairs["links"]] == ["consistent", "contradicted"]
    dir1 = judged(tree, runs, "table2", setting="dir1")["FedPETuning ≥ FedPFT > FedOT"]
    assert dir1["verdict"] == "inconclusive" and {link["reason"] for link in dir1["links"]} == {"1 common seed"}
    assert all(link["holm_p"] is None for link in dir1["links"])  # no p-value: outside the Holm family
    dir5 = judged(tree, runs, "table2", setting="dir5")["FedPETuning ≥ FedPFT > FedOT"]
    assert dir5["verdict"] == "n/a" and dir5["missing"] == ["FedOT"] and dir5["m"] == 0
    assert dir5["links"][1]["reason"] == "missing cell: FedOT"
    minilm = judged(tree, runs, "table3", model="minilm")
    assert minilm["FedPFT > FedPFT_B > FedPFT_D > FedPFT_N"]["verdict"] == "held"
    assert minilm["FedPFT > FedOT"]["verdict"] == "held"  # FedOT from Table 1: 69.0 > 67.0
    assert minilm["FedPFT > FedOT"]["means"] == pytest.approx({"FedPFT": 69.0, "FedOT": 67.0})
    mpnet = judged(tree, runs, "table3", model="mpnet")
    assert mpnet["FedPFT > FedPFT_B > FedPFT_D > FedPFT_N"]["verdict"] == "contradicted"
    assert mpnet["FedPFT > FedOT"]["verdict"] == "contradicted"
    table4 = judged(tree, runs, "table4")
    assert table4["the optimum of t is 10"]["verdict"] == "held"
    assert table4["the optimum of p is 0.5"]["verdict"] == "contradicted"  # p=0.3 beats p=0.5 on both seeds


def test_markdown_claim_lines(tree, runs):
    text = render(tree, runs, ["table1", "table2"])
    assert (
        "- minilm · bbc · IID: FedPETuning ≥ FedPFT > FedOT — **held**: FedPETuning 91.0 ≥ FedPFT 89.0 (seeds 1 2): "
        "Δ +2.0 [+2.0, +2.0], n=2, p=0, Holm p=0 → consistent; FedPFT 89.0 > FedOT 81.0: Δ +8.0 [+8.0, +8.0], n=2, "
        "p=0, Holm p=0 → held [paper: BERT held, RoBERTa held]"
    ) in text
    assert "- minilm · bbc-pairs · IID: FedPETuning ≥ FedPFT > FedOT — **contradicted**: " in text
    assert "FedPFT 61.0 > FedOT 67.0: Δ −6.0 [−6.0, −6.0], n=2, p=0, Holm p=0 → contradicted" in text
    assert "FedPFT 86.0 > FedOT 80.0: Δ +6.0, n=1 → inconclusive (1 common seed)" in text
    assert "α=5: FedPETuning ≥ FedPFT > FedOT — n/a (missing: FedOT): " in text
    assert "FedPFT > FedOT: n/a (missing cell: FedOT)" in text
    # the paper's own Table 2 BERT SST-2 numbers at α=5 have FedPFT above FedPETuning
    assert "[paper: BERT not held, RoBERTa held]" in text
    assert "noise" not in text and "noise" not in LEGEND
    # the header states the test, the Holm family of the block and the pairing on common seeds
    assert "paired t-test on the per-seed differences of final-round accuracy (95 % t-interval, two-sided p)" in text
    assert "Holm's correction across the m = 4 testable links of this block at family-wise α = 0.05" in text
    assert "minilm · bbc · IID: FedPETuning has seeds 1–3, FedPFT 1 2 → paired on 1 2" in text
    assert "the m = 0 testable links" in text  # Table 2: one seed per cell, FedOT missing at α=5
    table4 = render(tree, runs, ["table4"])
    assert "the optimum of p is 0.5 — **contradicted**: p=0.5 69.0 > p=0.3 72.0: Δ −3.0 [−3.0, −3.0], n=2" in table4


def test_verdict_bullets(tree, runs, capsys):
    bullets = verdict_bullets(tree, runs, ["table1", "table2"]).splitlines()
    assert bullets[0] == (
        "- Table 1 (BBC block), minilm · bbc · IID: FedPETuning ≥ FedPFT > FedOT is **held**: FedPETuning − FedPFT "
        "+2.0 [+2.0, +2.0] (consistent), FedPFT − FedOT +8.0 [+8.0, +8.0] (held, Holm p 0); 2 seeds. "
        "The paper's numbers hold it (BERT, RoBERTa)."
    )
    assert "FedPFT − FedOT −6.0 [−6.0, −6.0] (contradicted, Holm p 0)" in bullets[1]
    assert "FedPFT − FedOT +6.0 (inconclusive, 1 common seed); 1 seed." in bullets[2]
    assert "is **n/a**: " in bullets[3] and "FedPFT − FedOT: n/a (missing cell: FedOT)" in bullets[3]
    assert bullets[3].endswith("The paper's numbers hold it for RoBERTa, not for BERT.")
    assert make_tables.main(["--root", str(tree), "--tables", "1", "2", "--bullets"]) == 0
    assert capsys.readouterr().out.splitlines() == bullets


def test_missing_tables_and_root(tmp_path, capsys):
    write_cell(tmp_path / "res", "table1/minilm/bbc/iid/FedPFT", [0.8])
    assert make_tables.main(["--root", str(tmp_path / "res"), "--tables", "1", "2"]) == 0
    assert "_Table 2: no runs under" in capsys.readouterr().out
    for empty in (tmp_path / "absent", tmp_path):  # a missing root; a root without table folders
        assert make_tables.main(["--root", str(empty)]) == 2
        assert capsys.readouterr().err.startswith("error: no runs under")
    assert plot_results.main(["--root", str(tmp_path / "absent"), "--out", str(tmp_path / "img")]) == 2


def test_plots_written(tree, tmp_path):
    written, notes = write_plots(tree, tmp_path)
    expected = {
        "embedded_table1_minilm_bbc_rounds.png",
        "embedded_table1_minilm_bbc_bytes.png",
        "embedded_table1_minilm_bbc-pairs_rounds.png",
        "embedded_table1_minilm_bbc-pairs_bytes.png",
        "embedded_table2_minilm_bbc_alpha.png",
        "embedded_table3_minilm_bbc-pairs_ablation.png",
        "embedded_table3_mpnet_bbc-pairs_ablation.png",
        "embedded_table4_minilm_bbc-pairs_t_p.png",
    }
    assert {p.name for p in written} == expected and notes == []
    assert all(p.stat().st_size > 1000 for p in written)
    curve = method_curves(load_runs(tree).query("table == 'table1' and task == 'bbc'"))
    assert curve["FedPETuning"]["mean"].iloc[-1] == pytest.approx(90.0)
    assert curve["FedPETuning"]["mb"].iloc[-1] == pytest.approx((SENT + RECEIVED) * ROUNDS / 1e6)
    fedpft = load_runs(tree).query("table == 'table1' and task == 'bbc'")
    assert alignment_rounds(fedpft) == [2, 4]


def test_plot_skips_missing_data(tmp_path):
    write_run(tmp_path / "res", "table1/minilm/bbc/iid/FedPFT", 1, 0.8, finished=False)
    written, notes = write_plots(tmp_path / "res", tmp_path / "img")
    assert written == [] and "skip res_table1_minilm_bbc_rounds.png: no finished runs with the data it needs" in notes
    assert "skip table2: no runs under" in " ".join(notes)


def test_cli(tree, tmp_path):
    out = tmp_path / "tables.md"
    tables = [
        sys.executable,
        str(SCRIPTS / "make_tables.py"),
        "--root",
        str(tree),
        "--tables",
        "1",
        "4",
        "--out",
        str(out),
    ]
    done = subprocess.run(tables, capture_output=True, text=True, check=True)
    assert done.stdout == out.read_text() and "### Table 1 — IID" in done.stdout and "Table 2" not in done.stdout
    plots = [sys.executable, str(SCRIPTS / "plot_results.py"), "--root", str(tree), "--out", str(tmp_path / "img")]
    done = subprocess.run(plots, capture_output=True, text=True, check=True)
    assert (
        done.stdout.count("wrote ") == 8 and (tmp_path / "img" / "embedded_table1_minilm_bbc_rounds.png").stat().st_size
    )
    missing = subprocess.run([*tables[:2], "--root", str(tmp_path / "absent")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")


def test_notebook_is_clean_nbformat4():
    notebook = json.loads((SCRIPTS / "plots.ipynb").read_text())
    assert notebook["nbformat"] == 4 and notebook["cells"]
    for nb_cell in notebook["cells"]:
        assert nb_cell["cell_type"] in ("markdown", "code") and "source" in nb_cell and "metadata" in nb_cell
        if nb_cell["cell_type"] == "code":
            assert nb_cell["outputs"] == [] and nb_cell["execution_count"] is None
            compile("".join(nb_cell["source"]), "plots.ipynb", "exec")


# ---------------------------------------------------------------------------------------------------- statistics
def test_paired_t_hand_computed():
    # differences 6.5, 1.3, 7.5: mean 15.3 / 3 = 5.1; deviations 1.4, -3.8, 2.4, squares 1.96 + 14.44 + 5.76 = 22.16,
    # sd = sqrt(22.16 / 2) = sqrt(11.08) = 3.3287; standard error 3.3287 / sqrt(3) = 1.9218; t_{0.975,2} = 4.3027,
    # half-width 4.3027 * 1.9218 = 8.269, interval [5.1 - 8.269, 5.1 + 8.269] = [-3.169, +13.369];
    # t = 5.1 / 1.9218 = 2.6538 and with 2 degrees of freedom the two-sided p = 1 - t / sqrt(t^2 + 2)
    # = 1 - 2.6538 / 3.0071 = 0.1175
    test = paired_t([6.5, 1.3, 7.5])
    assert test.n == 3 and test.delta == pytest.approx(5.1, abs=1e-2) and test.sd == pytest.approx(3.3287, abs=1e-2)
    assert (test.low, test.high) == pytest.approx((-3.169, 13.369), abs=1e-2)
    assert test.p == pytest.approx(0.1175, abs=1e-2)
    assert test.interval_text() == "+5.1 [−3.2, +13.4]" and format_p(test.p) == "0.12"


def test_paired_t_degenerate_cases():
    assert paired_t([]) == PairedTest(0)
    single = paired_t([4.2])  # one common seed: a mean difference, no interval, no p
    assert (single.n, single.delta, single.low, single.p) == (1, 4.2, None, None)
    assert link_verdict(">", single, None) == link_verdict("≥", single, None)
    assert link_verdict(">", single, None).verdict == "inconclusive"
    assert link_verdict(">", single, None).reason == "1 common seed" and single.interval_text() == "+4.2"
    same = paired_t([2.0, 2.0, 2.0])  # sd 0, Δ ≠ 0: p = 0, interval [Δ, Δ]
    assert (same.sd, same.low, same.high, same.p) == (0.0, 2.0, 2.0, 0.0)
    zero = paired_t([0.0, 0.0])  # sd 0, Δ = 0: p = 1, interval [0, 0]
    assert (zero.delta, zero.low, zero.high, zero.p) == (0.0, 0.0, 0.0, 1.0)
    assert paired_t([90.00000000000001 - 88.0, 92.0 - 90.0]).p == 0.0  # equal differences up to float rounding
    assert link_verdict(">", paired_t([]), None).verdict == "n/a"


def test_holm_adjustment():
    # sorted 0.01, 0.03, 0.04 with m = 3: 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04, raised to 0.06 by the
    # running maximum (step-down monotonicity); returned in the given order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002]) and holm([]) == []


def test_link_and_claim_verdicts():
    up, down, flat = paired_t([3.0, 4.0, 5.0]), paired_t([-3.0, -4.0, -5.0]), paired_t([1.0, -2.0, 1.5])
    # up: mean 4, sd 1, t = 4 / (1 / sqrt(3)) = 6.928; with 2 df p = 1 - t / sqrt(t^2 + 2) = 1 - 6.928 / 7.071 = 0.0202
    assert up.p == pytest.approx(0.0202, abs=1e-3)
    assert link_verdict(">", up, 0.04).verdict == "held"
    assert link_verdict(">", up, 0.06).verdict == "inconclusive"  # raw p < 0.05 but not after Holm
    assert link_verdict(">", down, 0.04).verdict == "contradicted"
    assert link_verdict("≥", down, 0.04).verdict == "contradicted"
    assert link_verdict("≥", down, 0.06).verdict == "consistent"  # below, but not significantly
    assert link_verdict("≥", flat, flat.p).verdict == link_verdict("≥", up, 0.01).verdict == "consistent"
    assert link_verdict(">", up, 0.01, untestable=True).verdict == "untestable"
    family = judge_family([(">", up, False), (">", down, True), ("≥", flat, False), (">", paired_t([1.0]), False)])
    # family: the untestable link and the single-seed link leave it, so m = 2 (up and flat)
    assert family[0][0] == pytest.approx(min(1, 2 * up.p)) and family[1][0] is None and family[3][0] is None
    assert [v.verdict for _, v in family] == ["held", "untestable", "consistent", "inconclusive"]
    assert claim_verdict([("≥", "consistent"), (">", "held")]) == "held"
    assert claim_verdict([("≥", "consistent"), (">", "inconclusive")]) == "inconclusive"
    assert claim_verdict([("≥", "contradicted"), (">", "held")]) == "contradicted"
    assert claim_verdict([("≥", "contradicted"), (">", "untestable")]) == "untestable"
    assert claim_verdict([("≥", "consistent"), (">", "n/a")]) == "n/a"


def test_link_verdicts_where_lower_is_better():
    """On a loss (better = -1) a link A > B says A's loss is lower: held when the differences A_s − B_s are
    significantly negative, contradicted when significantly positive; the same tests and Holm p as on an accuracy."""
    up, down = paired_t([3.0, 4.0, 5.0]), paired_t([-3.0, -4.0, -5.0])
    assert link_verdict(">", down, 0.04, better=-1).verdict == "held"
    assert link_verdict(">", up, 0.04, better=-1).verdict == "contradicted"
    assert link_verdict("≥", up, 0.04, better=-1).verdict == "contradicted"
    assert link_verdict("≥", down, 0.04, better=-1).verdict == "consistent"
    assert link_verdict(">", down, 0.06, better=-1).verdict == "inconclusive"
    # one family mixing an accuracy link and a loss link: Holm over both p-values (equal, 0.0202), m = 2: 0.0404
    family = judge_family([(">", up, False, 1), (">", down, False, -1)])
    assert [holm_p for holm_p, _ in family] == pytest.approx([2 * up.p] * 2) and 2 * up.p < 0.05
    assert [v.verdict for _, v in family] == ["held", "held"]
    assert [v.verdict for _, v in judge_family([(">", up, False), (">", down, False)])] == ["held", "contradicted"]
    assert ANSWER_LOSS.better == -1 and ANSWER_LOSS.described() == "final answer loss, where lower is better"
    assert ACCURACY.described() == "final-round accuracy" and not ANSWER_LOSS.one_class
    assert down.interval_text(3) == "−4.000 [−6.484, −1.516]"  # 4 ± 4.3027 / √3


# ---------------------------------------------------------------------------------------------------- result trees
ONE_CLASS = [[0, 154], [0, 154]]  # every example predicted as label 1: one non-zero column
BOTH = [[120, 34], [40, 114]]


def test_untestable_cell_from_one_class_predictions(tmp_path):
    for seed, (a, b) in enumerate([(0.80, 0.50), (0.82, 0.50), (0.85, 0.50)], start=1):
        write_run(tmp_path, "table3/minilm/wiki-pairs/iid/FedPFT", seed, a, confusion=BOTH)
        write_run(tmp_path, "table3/minilm/wiki-pairs/iid/FedOT", seed, b, confusion=ONE_CLASS)
        write_run(tmp_path, "table3/minilm/wiki-pairs/iid/FedPFT_B", seed, a - 0.02, confusion=BOTH)
        write_run(tmp_path, "table3/minilm/wiki-pairs/iid/FedPFT_D", seed, a - 0.05)  # older: nothing recorded
        write_run(
            tmp_path, "table3/minilm/wiki-pairs/iid/FedPFT_N", seed, 0.50, confusion=ONE_CLASS if seed > 1 else None
        )
    runs = load_runs(tmp_path)
    fedot = runs[runs["method"] == "FedOT"].iloc[0]
    assert fedot["one_class"] is True and fedot["predicted_counts"] == [0, 308]
    fedpft = runs[runs["method"] == "FedPFT"].iloc[0]
    assert fedpft["one_class"] is False and fedpft["predicted_counts"] == [160, 148]
    assert runs[runs["method"] == "FedPFT_D"]["one_class"].isna().all()
    claims = judged(tmp_path, runs, "table3")
    assert claims["FedPFT > FedOT"]["verdict"] == "untestable"
    assert claims["FedPFT > FedOT"]["links"][0]["reason"] == "every run of FedOT predicted one class"
    # FedPFT_N: two of three runs predicted one class, the third unknown, so the cell is not untestable
    ablation = claims["FedPFT > FedPFT_B > FedPFT_D > FedPFT_N"]
    assert ablation["verdict"] == "held" and ablation["m"] == 3  # the untestable link left the family
    text = render(tmp_path, runs, ["table3"])
    rows = {tuple(c.strip() for c in line.split("|")[4:5]): line.split("|") for line in text.splitlines()}
    assert rows["FedOT",][7].strip() == "3/3" and rows["FedPFT",][7].strip() == "0/3"
    assert rows["FedPFT_D",][7].strip() == "–" and rows["FedPFT_N",][7].strip() == "2/2 (1 not recorded)"
    assert "the m = 3 testable links of this block at family-wise α = 0.05 (1 untestable link(s) left out)" in text
    assert (
        "FedPFT 82.3 > FedOT 50.0: Δ +32.3 [" in text
        and "→ untestable (every run of FedOT predicted one class)" in text
    )


def test_predictions_read_the_metric_split_confusion():
    fm = {
        "eval_matched_accuracy": 0.6,
        "eval_matched_confusion": [[5, 0, 0], [3, 0, 0], [2, 0, 0]],
        "eval_mismatched_accuracy": 0.5,
        "eval_mismatched_confusion": [[4, 1, 0], [3, 1, 0], [1, 0, 2]],
    }
    metrics = [{"round": 1, "fm": fm}]
    assert predictions(metrics, "eval_matched_accuracy") == (True, [10, 0, 0])
    assert predictions(metrics, "eval_mismatched_accuracy") == (False, [8, 2, 2])
    assert predictions([{"round": 1, "fm": {"eval_accuracy": 0.5}}], "eval_accuracy") == (None, None)


def test_best_excludes_round_zero(tmp_path):
    run = write_run(tmp_path, "table1/minilm/wiki-topics/iid/FedPFT", 1, 0.70)
    records = read_metrics(run)
    records[0]["fm"]["eval_accuracy"] = 0.95  # the untrained model scores best: not a trained round
    write_metrics(run, records)
    record = run_record(tmp_path, run)
    assert record["best"] == pytest.approx(0.71) and record["best_round"] == ROUNDS - 1
    (run / "metrics.jsonl").unlink()  # without metrics.jsonl the summary's best stands
    record = run_record(tmp_path, run)
    assert record["best"] == pytest.approx(0.71) and record["best_round"] == ROUNDS - 1 and record["one_class"] is None


def test_blocks_and_unequal_seed_sets(tmp_path):
    write_cell(tmp_path, "table1/minilm/wiki-pairs/iid/FedPETuning", [0.80, 0.82, 0.81])
    write_cell(tmp_path, "table1/minilm/wiki-pairs/iid/FedPFT", [0.78, 0.79, 0.80])
    write_cell(tmp_path, "table1/minilm/wiki-pairs/iid/FedOT", [0.70, 0.74, 0.71])
    write_cell(tmp_path, "table1/minilm/bbc-pairs/iid/FedPFT", [0.60, 0.62])
    write_cell(tmp_path, "table1/minilm/bbc-pairs/iid/FedOT", [0.55, 0.58])
    write_cell(tmp_path, "table1/minilm/bbc-pairs/iid/FedPETuning", [0.65, 0.66])
    write_cell(tmp_path, "table4/minilm/wiki-pairs/t5/FedPFT", [0.75, 0.76, 0.74])
    write_cell(tmp_path, "table4/minilm/wiki-pairs/t10/FedPFT", [0.78, 0.79, 0.80, 0.77, 0.81])
    runs = load_runs(tmp_path)
    text = render(tmp_path, runs, ["table1", "table4"])
    table1 = text.split("### Table 1")[1].split("### Table 4")[0]
    main, bbc = table1.split(BBC_HEADING)
    assert "| minilm | wiki-pairs (≈ QNLI) " in main and "bbc-pairs" not in main
    assert "| minilm | bbc-pairs (≈ QNLI) " in bbc and "wiki-pairs" not in bbc
    assert "308-example evaluation sets" in BBC_HEADING
    assert "the m = 2 testable links of this block" in main and "the m = 2 testable links of this block" in bbc
    assert "`table1`: 9 runs found" in main and "`table1`: 6 runs found" in bbc
    blocks = {t: block_of(t) for t in ("wiki-topics", "wiki-pairs", "mnist", "bbc", "bbc-pairs")}
    assert blocks == {"wiki-topics": "main", "wiki-pairs": "main", "mnist": "main", "bbc": "bbc", "bbc-pairs": "bbc"}
    assert TASKS[:5] == ("wiki-topics", "wiki-pairs", "mnist", "bbc", "bbc-pairs")
    assert PAPER_TASK["wiki-topics"] == "sst2" and PAPER_TASK["wiki-pairs"] == "qnli"
    table4 = text.split("### Table 4")[1]
    assert "minilm · wiki-pairs · FedPFT: t=10 has seeds 1–5, t=5 1–3 → paired on 1 2 3" in table4
    t_link = judged(tmp_path, runs, "table4")["the optimum of t is 10"]["links"][0]
    assert t_link["seeds"] == [1, 2, 3] and t_link["test"].delta == pytest.approx(4.0)  # differences 3, 3, 6
    assert "paired on" not in table1  # equal seed sets: no note
    # the link's values are the means over the seeds it is paired on (t=10: 78, 79, 80 of its five), Δ their difference
    assert "t=10 79.0 > t=5 75.0 (seeds 1–3): Δ +4.0" in table4 and "| 79.0 ± 1.6 (n=5) |" in table4
    # the figure's points compare the same seeds: t=10 over 1-3 (79.0 ± 1.0), not its five (79.0 ± 1.6)
    cells = table_cells(cell_stats(runs), "table4")
    drawn, note = on_common_seeds(cells[cells["task"] == "wiki-pairs"])
    assert note == "seeds 1–3, those every point has"
    assert drawn.set_index("setting")["final_std"].to_dict() == pytest.approx({"t5": 1.0, "t10": 1.0})
    same, none = on_common_seeds(cells[(cells["task"] == "wiki-pairs") & (cells["setting"] == "t5")])
    assert none == "" and same["final_std"].tolist() == pytest.approx([1.0])


# ---------------------------------------------------------------------------------------------------- committed runs
COMMITTED = ROOT / "results" / "embedded"


@pytest.fixture(scope="module")
def committed():
    if not (COMMITTED / "table1").is_dir():
        pytest.skip("no committed runs under results/embedded")
    return load_runs(COMMITTED)


def committed_link(runs, table: str, task: str, setting: str, link: tuple[str, str, str]) -> tuple[dict, dict]:
    """(claim, link) of the minilm claim of `table` in the (task, setting) group holding `link`."""
    cells = table_cells(cell_stats(runs), table)
    for claim in orderings(cells, table):
        if (claim["model"], claim["task"], claim.get("setting", setting)) == ("minilm", task, setting):
            for found in claim["links"]:
                if found["link"] == link:
                    return claim, found
    raise AssertionError(f"no {link} in {table} {task} {setting}")


def test_committed_table1_bbc_pairs_fedpft_over_fedot(committed):
    # per-seed final accuracies (%, 308 examples): FedPFT 62.99 / 54.22 / 59.74, FedOT 56.49 / 52.92 / 52.27,
    # differences 6.49 / 1.30 / 7.47: Δ +5.09, sd 3.32, 95 % interval [-3.15, +13.32], p 0.117; Holm across the
    # BBC block's 6 links of Table 1: 0.47 -> inconclusive
    claim, link = committed_link(committed, "table1", "bbc-pairs", "iid", ("FedPFT", ">", "FedOT"))
    cells = cell_stats(committed).set_index(CELL)
    fedpft, fedot = (cells.loc[("table1", "minilm", "bbc-pairs", "iid", m), "finals"] for m in ("FedPFT", "FedOT"))
    assert [fedpft[s] - fedot[s] for s in (1, 2, 3)] == pytest.approx([6.5, 1.3, 7.5], abs=0.1)
    test = link["test"]
    assert (test.n, test.delta, test.low, test.high) == pytest.approx((3, 5.1, -3.2, 13.3), abs=0.1)
    assert test.p == pytest.approx(0.117, abs=0.01) and link["holm_p"] == pytest.approx(0.47, abs=0.01)
    assert link["verdict"] == "inconclusive" and claim["verdict"] == "inconclusive" and claim["m"] == 6


def test_committed_table2_dir10(committed):
    # bbc-pairs: differences 5.19 / 1.30 / 3.25, Δ +3.2 [-1.6, +8.1], p 0.10 -> inconclusive
    _, pairs = committed_link(committed, "table2", "bbc-pairs", "dir10", ("FedPFT", ">", "FedOT"))
    assert (pairs["test"].delta, pairs["test"].low, pairs["test"].high) == pytest.approx((3.2, -1.6, 8.1), abs=0.1)
    assert pairs["test"].p > 0.05 and pairs["verdict"] == "inconclusive"
    # bbc: differences 9.74 / 11.69 / 14.94, Δ +12.1 [+5.6, +18.6], p 0.015: above 0 unadjusted. Holm across the 12
    # testable links of Table 2's BBC block multiplies the smallest p by 12 (0.18): with 3 seeds the link stays
    # inconclusive after the family-wise correction
    claim, bbc = committed_link(committed, "table2", "bbc", "dir10", ("FedPFT", ">", "FedOT"))
    assert (bbc["test"].delta, bbc["test"].low, bbc["test"].high) == pytest.approx((12.1, 5.6, 18.6), abs=0.1)
    assert bbc["test"].p < 0.05 and claim["m"] == 12
    assert bbc["holm_p"] == pytest.approx(0.18, abs=0.01) and bbc["verdict"] == "inconclusive"


def test_committed_table2_wiki_pairs_at_alpha_1_is_untestable(committed):
    # every final evaluation of every method at α = 1 is one column of its recorded confusion matrix: seed 1 predicts
    # "not an answer" for all 2,200 pairs, seeds 2 and 3 "an answer" (runs with a seed share the partition and the
    # clients of the last round); the claim is untestable and its links leave the Holm family of the block
    runs = committed[(committed[CELL[:4]] == ["table2", "minilm", "wiki-pairs", "dir1"]).all(axis=1)]
    assert len(runs) == 9 and runs["one_class"].tolist() == [True] * 9
    counts = {(r.method, r.seed): r.predicted_counts for r in runs.itertuples()}
    assert all(counts[m, 1] == [2200, 0] and counts[m, 2] == counts[m, 3] == [0, 2200] for m, _ in counts)
    claim, link = committed_link(committed, "table2", "wiki-pairs", "dir1", ("FedPFT", ">", "FedOT"))
    assert link["verdict"] == "untestable" and claim["verdict"] == "untestable"
    assert "4 untestable link(s) left out" in render(COMMITTED, committed, ["table2"]).split(BBC_HEADING)[0]


def test_committed_table3_b_over_d_exceeds_the_seed_std(committed):
    # FedPFT_B − FedPFT_D per seed 4.22 / 2.27 / 3.57: Δ +3.35, sd 0.99, 95 % interval [+0.9, +5.8], p 0.028, which
    # is larger than either cell's seed std (2.8 and 2.0); Holm across Table 3's 4 links: 0.11 -> inconclusive
    claim, link = committed_link(committed, "table3", "bbc-pairs", "iid", ("FedPFT_B", ">", "FedPFT_D"))
    test = link["test"]
    assert (test.delta, test.sd, test.low, test.high) == pytest.approx((3.4, 1.0, 0.9, 5.8), abs=0.1)
    assert test.p == pytest.approx(0.028, abs=0.005) and link["holm_p"] == pytest.approx(0.11, abs=0.01)
    stds = cell_stats(committed).set_index(CELL)["final_std"]
    assert test.delta > max(stds[("table3", "minilm", "bbc-pairs", "iid", m)] for m in ("FedPFT_B", "FedPFT_D"))
    assert link["verdict"] == "inconclusive" and claim["m"] == 4


def test_ceilings_follow_table1(tmp_path):
    root = tmp_path / "embedded"
    write_cell(root, "table1/minilm/wiki-topics/iid/FedPFT", [0.80, 0.82])
    write_run(root, "ceiling/minilm/wiki-topics/centralised/FedPETuning", 1, 0.90, confusion=[[3, 0], [1, 2]])
    text = render(root, load_runs(root), ["table1"])
    assert text.index("### Table 1") < text.index(CEILING_HEADING)
    row = next(line for line in text.splitlines() if line.startswith("| minilm") and "| 90.0" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["minilm", "wiki-topics (≈ SST-2)", str(ROUNDS), "90.0", f"91.0 ({ROUNDS - 1})", "1", "no"]
    assert CEILING_HEADING not in render(root, load_runs(root), ["table2"])


def test_pages_replace_only_the_generated_part(tree, runs, tmp_path):
    start, end = GENERATED
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nkept above\n{start}\nstale text\n{end}\nkept below\n")
    images = tmp_path / "images"
    images.mkdir()
    (images / "embedded_table1_minilm_wiki-pairs_rounds.png").write_bytes(b"")
    (images / "embedded_table1_minilm_bbc_bytes.png").write_bytes(b"")
    (images / "notes.png").write_bytes(b"")  # not a table figure: not linked
    page = tmp_path / "docs" / "results.md"
    write_pages(tree, runs, ["table1", "table2"], readme, page, images)
    text = readme.read_text()
    assert text.startswith("# Title\n\nkept above\n") and text.endswith(f"{end}\nkept below\n")
    assert "stale text" not in text
    assert verdict_bullets(tree, runs, ["table1", "table2"]) in text
    body = page.read_text()
    assert render(tree, runs, ["table1", "table2"]).rstrip("\n") in body
    figures = [line for line in body.splitlines() if line.startswith("![")]
    assert len(figures) == 2 and "wiki-pairs_rounds.png" in figures[0]  # the main block first, then the BBC block
    assert all(f"]({images.as_posix()}/" in f or "](../" in f for f in figures)
    with pytest.raises(ValueError, match="must hold the lines"):
        replace_generated("no markers", "x", "README.md")


def test_committed_pages_are_current(monkeypatch):
    """README's generated results part and docs/results.md are what `python scripts/make_tables.py --write` makes of
    the committed runs: rerun it whenever result files or the figures change."""
    monkeypatch.chdir(ROOT)
    root, page, images = Path("results/embedded"), Path("docs/results.md"), Path("images")
    runs = load_runs(root)
    tables = reported_tables(runs)  # as --write: Table 5 too once its runs are committed
    assert page.read_text() == results_page(root, runs, tables, images, "../images/")
    readme = Path("README.md").read_text()
    block = readme_block(root, runs, tables, page.as_posix())
    assert replace_generated(readme, block, "README.md") == readme


def test_a_run_that_skips_round_zero(tmp_path):
    """A Table 2-4 run evaluated at rounds 15 and 30 only (--eval_round_zero False): best and final from those rounds,
    and the block's settings line says round 0 was not evaluated."""
    run = write_run(tmp_path, "table2/minilm/wiki-topics/dir1/FedPFT", 1, 0.70)
    records = read_metrics(run)
    for r in records:
        if r["round"] not in (ROUNDS // 2, ROUNDS):
            del r["fm"]
    write_metrics(run, records)
    config = json.loads((run / "config.json").read_text())
    config["args"] |= {"eval_interval": ROUNDS // 2, "eval_round_zero": False}
    (run / "config.json").write_text(json.dumps(config))
    record = run_record(tmp_path, run)
    assert record["final"] == pytest.approx(0.70) and record["best_round"] in (ROUNDS // 2, ROUNDS)
    assert record["eval_round_zero"] is False
    text = render(tmp_path, load_runs(tmp_path), ["table2"])
    assert f"FM evaluated every {ROUNDS // 2} round(s) and at the last (not the untrained model of round 0" in text


# ---------------------------------------------------------------------------------------------------- Table 5
# A decoder LLM on wiki-qa, beyond the paper: per method the final topic accuracies, final answer losses (nats) and
# client parameters (Mi) of seeds 1-3. Hand-computed paired differences, seeds 1 2 3:
#   topic accuracy  FedPETuning − FedPFT  4, 4, 4 (points)            sd 0: p = 0            → consistent
#                   FedPFT − FedOT         6, 7, 5                     mean 6, sd 1, t = 6√3 = 10.392, p = 1 − t/√(t²+2)
#                                                                      = 0.00913, interval 6 ± 4.3027/√3 = [3.52, 8.48]
#                   FedOT − FedOT-noKD     10, 9, 14                   mean 11, sd √7 = 2.646, t = 7.201, p = 0.01874,
#                                                                      interval 11 ± 4.3027 · 2.646/√3 = [4.43, 17.57]
#   answer loss     FedPETuning − FedPFT  −0.1, −0.1, −0.1 (nats)     sd 0: p = 0; lower is better, so FedPETuning's
#                                                                      lower loss is consistent with "≥", not against it
#                   FedPFT − FedOT         +0.30, +0.25, +0.35         mean +0.30, sd 0.05, t = 10.392, p = 0.00913:
#                                                                      FedPFT's loss is higher, so "FedPFT > FedOT" on
#                                                                      the loss is contradicted
# Holm over the block's m = 5 testable links, p sorted 0, 0, 0.00913, 0.00913, 0.01874: 5·0, 4·0, 3·0.00913 = 0.0274,
# 2·0.00913 = 0.0183 → 0.0274 (running maximum), 1·0.01874 → 0.0274; so every strict link has Holm p 0.0274 ≤ 0.05.
LM_CELLS = {
    "FedPETuning": ([0.70, 0.72, 0.74], [2.00, 2.10, 2.05], 100),
    "FedPFT": ([0.66, 0.68, 0.70], [2.10, 2.20, 2.15], 40),
    "FedOT": ([0.60, 0.61, 0.65], [1.80, 1.95, 1.80], 40),
    "FedOT-noKD": ([0.50, 0.52, 0.51], [2.50, 2.60, 2.55], 40),
}
LM_HOLM = 3 * (1 - 6 * 3**0.5 / (108 + 2) ** 0.5)  # 3 · p of FedPFT − FedOT, the running maximum of the family
ONE_TOPIC = [[0] * 3 + [5] + [0] * 7 for _ in range(11)]  # every article answered with topic 3


def write_lm_cell(root: Path, cell: str, finals, losses, client_mi: float = 40, confusion=None) -> None:
    for seed, (final, loss) in enumerate(zip(finals, losses), start=1):
        write_run(root, cell, seed, final, loss=loss, client_mi=client_mi, confusion=confusion)


@pytest.fixture(scope="module")
def lm_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm") / "embedded"
    for method, (finals, losses, client_mi) in LM_CELLS.items():
        write_lm_cell(root, f"table5/smollm2/wiki-qa/iid/{method}", finals, losses, client_mi)
    write_lm_cell(root, "table5/smollm2/wiki-qa/dir1/FedPFT", [0.60, 0.62], [2.3, 2.4])  # its other cells missing
    write_cell(root, "table1/minilm/wiki-topics/iid/FedOT", [0.6, 0.62])  # a classifier beside it
    return root


@pytest.fixture(scope="module")
def lm_runs(lm_tree):
    return load_runs(lm_tree)


def test_table5_is_a_table_beyond_the_paper(runs, lm_runs):
    assert TABLE_TITLES["table5"] == "Table 5 — beyond the paper: a decoder LLM (SmolLM2-135M-Instruct) on wiki-qa"
    assert "smollm2" in MODELS and "wiki-qa" in TASKS and block_of("wiki-qa") == "main"
    assert "table5" not in TABLES and reported_tables(runs) == list(TABLES)  # without runs: the paper's four only
    assert reported_tables(lm_runs) == [*TABLES, "table5"]
    assert paper_numbers("table5", "smollm2", "wiki-qa", "iid", "FedPFT") == {}
    assert all(claim.ours for claim in CLAIMS["table5"]) and not any(c.ours for t in TABLES for c in CLAIMS[t])
    assert [claim.measure.better for claim in CLAIMS["table5"]] == [1, -1, 1]
    assert (table_cells(cell_stats(lm_runs), "table5")["shared_from"] == "").all()  # no cell borrowed from Table 1


def test_table5_run_records_hold_the_answer_loss(lm_runs, runs):
    lm = lm_runs[(lm_runs["method"] == "FedPETuning") & (lm_runs["seed"] == 1)].iloc[0]
    assert lm["metric"] == "eval_topic_accuracy" and lm["final"] == pytest.approx(0.70)
    assert lm["final_loss"] == pytest.approx(2.0) and lm["final_perplexity"] == pytest.approx(math.exp(2.0))
    assert lm["client_params"] == 100 * 2**20
    assert runs["final_loss"].isna().all() and runs["final_perplexity"].isna().all()  # a classifier's loss: not shown


def test_table5_cells_show_topic_accuracy_loss_and_perplexity(lm_tree, lm_runs, tree, runs):
    stats = cell_stats(lm_runs)
    peft = cell(stats, "table5", "smollm2", "wiki-qa", "iid", "FedPETuning")
    perplexities = [math.exp(x) for x in (2.00, 2.10, 2.05)]  # 7.389, 8.166, 7.768
    assert (peft["final_mean"], peft["final_std"]) == pytest.approx((72.0, 2.0))
    assert (peft["loss_mean"], peft["loss_std"]) == pytest.approx((2.05, 0.05))
    assert (peft["ppl_mean"], peft["ppl_std"]) == pytest.approx(
        (statistics.mean(perplexities), statistics.stdev(perplexities))
    )
    assert peft["loss_finals"] == pytest.approx({1: 2.00, 2: 2.10, 3: 2.05})
    text = render(lm_tree, lm_runs, ["table5"])
    table5 = text.split("### " + TABLE_TITLES["table5"])[1]
    rows = {tuple(c.strip() for c in line.split("|")[3:5]): line for line in table5.splitlines() if "| smollm2" in line}
    assert [c.strip() for c in rows["IID", "FedPETuning"].split("|")[5:12]] == [
        "72.0 ± 2.0 (n=3)",
        "73.0 ± 2.0 (round 3)",  # best: round 3 at final + 0.01
        "–",
        "2.050 ± 0.050",
        f"{statistics.mean(perplexities):.2f} ± {statistics.stdev(perplexities):.2f}",  # 7.77 ± 0.39
        "–",  # no paper number
        "100.0",
    ]
    # FedOT's losses 1.80, 1.95, 1.80: sd √(0.015 / 2) = 0.087
    assert "| 1.850 ± 0.087 " in rows["IID", "FedOT"] and "| 40.0 " in rows["IID", "FedOT"]
    head = [c.strip() for c in next(line for line in table5.splitlines() if line.startswith("| model")).split("|")]
    lm_columns = ["final topic acc % (n)", "best topic acc % (round ≥ 1)", "one-class runs", "final answer loss"]
    assert head[5:10] == [*lm_columns, "perplexity"]
    assert "client params (Mi, decoder layers)" in head
    assert "11 topics, chance 9.1 %" in table5 and "Not in the paper" in table5
    assert "token-weighted negative log-likelihood of the answer tokens on the held-out records" in table5
    assert "final answer loss" not in render(tree, runs, ["table1"])  # the classifiers' tables are unchanged


def test_table5_shows_the_untuned_fm_its_rows_are_read_against(tmp_path, tree, runs, lm_runs):
    """Round 0 of a causal-LM run is the untuned FM (the same model for every method and seed): the block names the
    run that evaluated it and its topic accuracy, answer loss and perplexity; a classifier's round 0 (an untrained
    head) is not shown."""
    for method in ("FedPETuning", "FedPFT"):
        write_lm_cell(tmp_path, f"table5/smollm2/wiki-qa/iid/{method}", [0.70, 0.72], [2.0, 2.1])
    for run in sorted(path.parent for path in tmp_path.rglob("metrics.jsonl")):
        if "fedpetuning" in run.name and run.name.endswith("seed1"):
            continue  # the only run that evaluated round 0
        records = read_metrics(run)
        del records[0]["fm"]
        write_metrics(run, records)
    lm = load_runs(tmp_path)
    assert lm["round0"].notna().sum() == 1 and lm["round0"].max() == pytest.approx(0.5)
    text = render(tmp_path, lm, ["table5"])
    # round 0 of write_run: accuracy 0.5, answer loss 2.0 + 0.1 · ROUNDS = 2.4, perplexity e^2.4 = 11.02
    line = "- smollm2 · wiki-qa, the untuned FM (round 0, evaluated in FedPETuning seed 1): topic acc 50.0 %, "
    assert line + "answer loss 2.400, perplexity 11.02" in text
    bullet = "- Table 5, smollm2 · wiki-qa: the untuned FM (round 0) scores topic acc 50.0 %, answer loss 2.400, "
    assert bullet + "perplexity 11.02, the reference each method's row is read against." in verdict_bullets(
        tmp_path, lm, ["table5"]
    )
    assert "untuned FM" not in render(tree, runs, ["table1"])  # every classifier run here evaluated round 0
    assert "untuned FM" not in verdict_bullets(tree, runs, ["table1"])
    # runs that disagree on round 0 (here each cell's answer loss starts 0.1 · ROUNDS above its own final) show the range
    (disagreeing,) = untuned_fm(lm_runs)
    assert disagreeing["measures"].startswith("topic acc 50.0 %, answer loss 2.200–3.000 (differs across runs)")


def test_table5_orderings_take_the_loss_the_right_way(lm_runs):
    claims = judged(None, lm_runs, "table5", setting="iid")
    accuracy = claims["FedPETuning ≥ FedPFT > FedOT on topic accuracy"]
    loss = claims["FedPETuning ≥ FedPFT > FedOT on answer loss"]
    no_kd = claims["FedOT > FedOT-noKD on topic accuracy"]
    assert all(c["m"] == 5 and c["ours"] and c["paper"] == {} for c in (accuracy, loss, no_kd))
    first, second = accuracy["links"]
    assert (first["test"].delta, first["test"].p, first["verdict"]) == (pytest.approx(4.0), 0, "consistent")
    assert (second["test"].delta, second["test"].low, second["test"].high) == pytest.approx(
        (6.0, 3.516, 8.484), abs=1e-3
    )
    assert second["test"].p == pytest.approx(0.00913, abs=1e-5) and second["holm_p"] == pytest.approx(LM_HOLM)
    assert second["verdict"] == "held" and accuracy["verdict"] == "held"
    first, second = loss["links"]  # differences of loss A − B: negative is better
    assert first["test"].delta == pytest.approx(-0.1) and first["verdict"] == "consistent"  # not "contradicted"
    assert (second["test"].delta, second["test"].low, second["test"].high) == pytest.approx(
        (0.3, 0.176, 0.424), abs=1e-3
    )
    assert second["holm_p"] == pytest.approx(LM_HOLM) and second["verdict"] == "contradicted"  # not "held"
    assert loss["verdict"] == "contradicted" and loss["means"] == pytest.approx(
        {"FedPETuning": 2.05, "FedPFT": 2.15, "FedOT": 1.85}
    )
    (link,) = no_kd["links"]
    assert (link["test"].delta, link["test"].low, link["test"].high) == pytest.approx((11.0, 4.428, 17.572), abs=1e-3)
    assert link["test"].p == pytest.approx(0.01874, abs=1e-5) and link["holm_p"] == pytest.approx(LM_HOLM)
    assert no_kd["verdict"] == "held"
    dir1 = judged(None, lm_runs, "table5", setting="dir1")  # FedPFT alone: n/a, outside the family
    assert {c["verdict"] for c in dir1.values()} == {"n/a"} and {c["m"] for c in dir1.values()} == {5}


def test_table5_claim_lines_and_bullets(lm_tree, lm_runs):
    text = render(lm_tree, lm_runs, ["table5"])
    assert (
        "paired t-test on the per-seed differences of final-round topic accuracy and of final answer loss, where lower "
        "is better (95 % t-interval, two-sided p), Holm's correction across the m = 5 testable links of this block"
    ) in text
    assert "Orderings we hypothesise (not the paper's claims), each link judged on paired per-seed differences:" in text
    assert "Orderings the paper claims" not in text
    assert (
        "- smollm2 · wiki-qa · IID: FedPETuning ≥ FedPFT > FedOT on answer loss (lower is better; our hypothesis, not "
        "the paper's) — **contradicted**: FedPETuning 2.050 ≥ FedPFT 2.150: Δ −0.100 [−0.100, −0.100], n=3, p=0, "
        "Holm p=0 → consistent; FedPFT 2.150 > FedOT 1.850: Δ +0.300 [+0.176, +0.424], n=3, p=0.009, Holm p=0.03 "
        "→ contradicted"
    ) in text
    assert "FedPFT 68.0 > FedOT 62.0: Δ +6.0 [+3.5, +8.5], n=3, p=0.009, Holm p=0.03 → held" in text
    assert "[paper:" not in text.split("### Table 5")[1]
    bullets = [b for b in verdict_bullets(lm_tree, lm_runs, ["table5"]).splitlines() if "· IID:" in b]
    assert bullets[0] == (
        "- Table 5, smollm2 · wiki-qa · IID: FedPETuning ≥ FedPFT > FedOT on topic accuracy (our hypothesis, not the "
        "paper's) is **held**: FedPETuning − FedPFT +4.0 [+4.0, +4.0] (consistent), FedPFT − FedOT +6.0 [+3.5, +8.5] "
        "(held, Holm p 0.03); 3 seeds."
    )
    assert "FedPFT − FedOT +0.300 [+0.176, +0.424] (contradicted, Holm p 0.03); 3 seeds." in bullets[1]
    assert bullets[2].startswith("- Table 5, smollm2 · wiki-qa · IID: FedOT > FedOT-noKD on topic accuracy")


def test_table5_one_topic_spoils_accuracy_not_loss(tmp_path):
    for method, (finals, losses, client_mi) in LM_CELLS.items():
        confusion = ONE_TOPIC if method == "FedOT" else None
        write_lm_cell(tmp_path, f"table5/smollm2/wiki-qa/iid/{method}", finals, losses, client_mi, confusion)
    claims = judged(None, load_runs(tmp_path), "table5")
    assert claims["FedPETuning ≥ FedPFT > FedOT on topic accuracy"]["verdict"] == "untestable"
    assert claims["FedOT > FedOT-noKD on topic accuracy"]["verdict"] == "untestable"
    assert claims["FedPETuning ≥ FedPFT > FedOT on answer loss"]["verdict"] == "contradicted"
    assert claims["FedPETuning ≥ FedPFT > FedOT on answer loss"]["m"] == 3  # the two untestable links left


def test_table5_in_make_tables_and_pages(lm_tree, lm_runs, tree, tmp_path, capsys):
    assert make_tables.main(["--root", str(lm_tree)]) == 0  # by default: Table 5 when it has runs
    out = capsys.readouterr().out
    assert "### Table 1 — IID" in out and "### " + TABLE_TITLES["table5"] in out
    assert make_tables.main(["--root", str(tree)]) == 0 and "Table 5" not in capsys.readouterr().out
    assert make_tables.main(["--root", str(tree), "--tables", "5"]) == 0
    assert "_Table 5: no runs under" in capsys.readouterr().out
    start, end = GENERATED
    readme, page, images = tmp_path / "README.md", tmp_path / "docs" / "results.md", tmp_path / "images"
    readme.write_text(f"# Title\n{start}\n{end}\n")
    images.mkdir()
    for name in ("embedded_table5_smollm2_wiki-qa_curves.png", "embedded_table5_smollm2_wiki-qa_curves-dir1.png"):
        (images / name).write_bytes(b"")
    assert (
        make_tables.main(
            ["--root", str(lm_tree), "--write", "--readme", str(readme), "--page", str(page)]
            + ["--images", str(images)]
        )
        == 0
    )
    body = page.read_text()
    assert "### " + TABLE_TITLES["table5"] in body and "- Table 5, smollm2 · wiki-qa · IID: " in body
    assert "![Table 5, smollm2 on wiki-qa: FM topic accuracy and answer loss per evaluated round" in body
    assert "![Table 5, smollm2 on wiki-qa (α=1): FM topic accuracy and answer loss" in body
    text = readme.read_text()
    assert "per-seed final-round accuracy; Table 5: topic accuracy and answer loss, Holm's" in text
    assert verdict_bullets(lm_tree, lm_runs, reported_tables(lm_runs)) in text


def test_table5_curves(lm_tree, lm_runs, tmp_path):
    written, notes = write_plots(lm_tree, tmp_path)
    names = {p.name for p in written}
    assert {"embedded_table5_smollm2_wiki-qa_curves.png", "embedded_table5_smollm2_wiki-qa_curves-dir1.png"} <= names
    assert not any("table5" in note for note in notes)
    iid = lm_runs.query("table == 'table5' and setting == 'iid'")
    loss, accuracy = method_curves(iid, "loss"), method_curves(iid)
    assert list(loss) == ["FedPETuning", "FedOT", "FedOT-noKD", "FedPFT"]
    # the answer loss falls by 0.1 a round to the final: round 0 at 2.05 + 0.1 · ROUNDS, round ROUNDS at 2.05
    assert loss["FedPETuning"]["mean"].iloc[0] == pytest.approx(2.05 + 0.1 * ROUNDS)
    assert loss["FedPETuning"]["mean"].iloc[-1] == pytest.approx(2.05)
    assert (loss["FedOT"]["min"].iloc[-1], loss["FedOT"]["max"].iloc[-1]) == pytest.approx((1.80, 1.95))
    assert accuracy["FedPETuning"]["mean"].iloc[-1] == pytest.approx(72.0)
    tuned = method_curves(iid, "loss", first_round=1)  # the LM figure's: round 0 is drawn as the untuned FM's line
    assert tuned["FedPETuning"]["round"].tolist() == list(range(1, ROUNDS + 1))
    assert method_curves(lm_runs.query("table == 'table1'"), "loss") == {}  # a classifier has no answer loss
