"""scripts/make_tables.py and scripts/plot_results.py on a hand-written result tree: means and sample stds,
unfinished runs, missing optional fields, the paper's numbers beside the right cells, the claimed orderings judged
held / not held / n/a, the missing-root error, the PNG files, and one CLI run of each."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ROUNDS, CLIENTS, PROPORTION = 4, 20, 0.2
SENT, RECEIVED, SHIPPING = 1_000_000, 500_000, 10_000_000  # bytes per trained round, one-time model shipping


def load_script(name: str):
    """Import scripts/<name>.py as module `name` (plot_results imports make_tables by that name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


make_tables = load_script("make_tables")
plot_results = load_script("plot_results")


def write_run(root: Path, cell: str, seed: int, final: float, finished: bool = True, bare: bool = False) -> Path:
    """A run folder of cell "<table>/<model>/<task>/<setting>/<method>" whose FM accuracy climbs from 0.5 to
    `final` + 0.01 at round ROUNDS - 1 (the best round) and ends at `final`. `bare`: an older run without the
    optional fields (no parameter counts, communication, wall time, byte counters)."""
    table, model, task, setting, method = cell.split("/")
    run = root / cell / task / model / f"{method.lower()}-r{ROUNDS}-seed{seed}"
    run.mkdir(parents=True)
    best = final + 0.01
    accuracy = [0.5 + (best - 0.5) * r / (ROUNDS - 1) for r in range(ROUNDS)] + [final]
    records = []
    for r, acc in enumerate(accuracy):
        record = {
            "round": r,
            "fm": {"eval_accuracy": acc, "eval_loss": 1 - acc},
            "aligned": method == "FedPFT" and r % 2 == 0 and r > 0,
        }
        if not bare:
            record |= {"bytes_sent": SENT * (r > 0), "bytes_received": RECEIVED * (r > 0)}
            record |= {"bytes_sent_cumulative": SENT * r, "bytes_received_cumulative": RECEIVED * r}
        records.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    args = {"seed": seed, "num_rounds": ROUNDS, "num_clients": CLIENTS, "proportion": PROPORTION, "method": "pft"}
    config = {"args": args, "metric_for_best_model": "accuracy"}
    if not bare:
        config |= {"client_encoder_layer_parameters": 47 * 2**20, "fm_encoder_layer_parameters": 81 * 2**20}
    (run / "config.json").write_text(json.dumps(config))
    summary = {"metric": "eval_accuracy", "finished": finished, "method": method, "final_round": ROUNDS}
    summary |= {"final": {"eval_accuracy": final}, "best_round": ROUNDS - 1, "best": {"eval_accuracy": best}}
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


def write_cell(root: Path, cell: str, finals: list[float]) -> None:
    for seed, final in enumerate(finals, start=1):
        write_run(root, cell, seed, final)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results") / "embedded"
    # Table 1: bbc holds FedPETuning ≥ FedPFT > FedOT (the first link within noise), bbc-pairs does not
    write_cell(root, "table1/minilm/bbc/iid/FedPETuning", [0.90, 0.92, 0.88])  # 90.0 ± 2.0
    write_cell(root, "table1/minilm/bbc/iid/FedPFT", [0.88, 0.90])  # 89.0 ± 1.414
    write_run(root, "table1/minilm/bbc/iid/FedPFT", 3, 0.10, finished=False)  # excluded
    write_cell(root, "table1/minilm/bbc/iid/FedOT", [0.80, 0.82])  # 81.0 ± 1.414
    write_run(root, "table1/minilm/bbc/iid/FedOT-noKD", 1, 0.75, bare=True)
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedPETuning", [0.70, 0.72])
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedPFT", [0.60, 0.62])  # 61.0 < FedOT's 67.0
    write_cell(root, "table1/minilm/bbc-pairs/iid/FedOT", [0.66, 0.68])
    # Table 2: α=1 with one seed each (noise unknown, not held), α=5 lacks FedOT (n/a)
    write_cell(root, "table2/minilm/bbc/dir1/FedPETuning", [0.85])
    write_cell(root, "table2/minilm/bbc/dir1/FedPFT", [0.86])
    write_cell(root, "table2/minilm/bbc/dir1/FedOT", [0.80])
    write_cell(root, "table2/minilm/bbc/dir5/FedPETuning", [0.87])
    write_cell(root, "table2/minilm/bbc/dir5/FedPFT", [0.86])
    # Table 3: minilm holds FedPFT > B > D > N; FedOT comes from Table 1 (67.0 < FedPFT's 69.0); mpnet inverts
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
    return make_tables.load_runs(tree)


def cell(stats, table: str, model: str, task: str, setting: str, method: str):
    found = stats[(stats[make_tables.CELL] == [table, model, task, setting, method]).all(axis=1)]
    assert len(found) == 1
    return found.iloc[0]


def judged(tree, runs, table: str, **where) -> dict[str, dict]:
    cells = make_tables.table_cells(make_tables.cell_stats(runs), table)
    found = [j for j in make_tables.orderings(cells, table) if all(j.get(k) == v for k, v in where.items())]
    return {j["claim"]: j for j in found}


def test_load_runs_reads_every_run(runs):
    assert len(runs) == 15 + 5 + 18 + 10
    assert int((~runs["finished"]).sum()) == 1
    bare = runs[runs["method"] == "FedOT-noKD"].iloc[0]
    assert bare["seed"] == 1 and bare["rounds"] == ROUNDS and bare["final"] == 0.75
    assert all(bare[k] != bare[k] for k in ("client_params", "bytes_total", "shipping_bytes", "wall_seconds"))  # NaN


def test_cell_stats_means_and_sample_stds(runs):
    stats = make_tables.cell_stats(runs)
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
    text = make_tables.render(tree, runs, ["table1", "table3", "table4"])
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
        no_kd[5].strip() == "75.0 (n=1)" and [c.strip() for c in no_kd[7:11]] == ["–"] * 4
    )  # no paper number, no optional fields
    assert "BERT 86.9 · RoBERTa 86.7" in rows["minilm", "bbc-pairs (≈ QNLI)", "IID", "FedPFT_B"]  # Table 3
    assert "BERT 83.9 · RoBERTa 85.3" in rows["minilm", "bbc-pairs (≈ QNLI)", "IID †", "FedOT"]  # shared with Table 1
    assert "BERT 87.4 · RoBERTa 87.8" in rows["minilm", "bbc-pairs (≈ QNLI)", "p=0.3", "FedPFT"]  # Table 4
    assert "`table1`: 15 runs found, 14 finished; seeds 1/2/3; rounds 4; clients 20, 0.2 of them per round" in text
    # 13 finished runs with a logged time of 12.5 s (the bare run has none, the unfinished one is left out)
    assert "of them per round; run time 3 min (13 runs, their round times summed)" in text.split("`table1`")[1]
    assert "`table3`: 18 runs found, 18 finished" in text and "cells shared with Table 1 (†): 1" in text


def test_paper_layout_uses_the_same_model_row(tmp_path):
    write_cell(tmp_path, "table1/bert-base-uncased/qnli/iid/FedPFT", [0.86])
    write_cell(tmp_path, "table1/roberta-base/sst2/iid/FedOT", [0.91])
    text = make_tables.render(tmp_path, make_tables.load_runs(tmp_path), ["table1"])
    assert "| bert-base-uncased | qnli " in text and "| 87.5 " in text and "| 92.8 " in text and "BERT 87.5" not in text


def test_orderings_held_and_not_held(tree, runs):
    bbc = judged(tree, runs, "table1", task="bbc")["FedPETuning ≥ FedPFT > FedOT"]
    assert (bbc["verdict"], bbc["noise"]) == ("held", "within noise")  # 90.0 vs 89.0 with std 2.0
    assert [link["beyond_noise"] for link in bbc["links"]] == [False, True]
    assert bbc["paper"] == {"BERT": "held", "RoBERTa": "held"}
    pairs = judged(tree, runs, "table1", task="bbc-pairs")["FedPETuning ≥ FedPFT > FedOT"]
    assert (pairs["verdict"], pairs["noise"]) == ("not held", "beyond noise")  # FedPFT 61.0 vs FedOT 67.0
    dir1 = judged(tree, runs, "table2", setting="dir1")["FedPETuning ≥ FedPFT > FedOT"]
    assert (dir1["verdict"], dir1["noise"]) == ("not held", "noise unknown")
    dir5 = judged(tree, runs, "table2", setting="dir5")["FedPETuning ≥ FedPFT > FedOT"]
    assert dir5["verdict"] == "n/a" and dir5["missing"] == ["FedOT"]
    minilm = judged(tree, runs, "table3", model="minilm")
    assert minilm["FedPFT > FedPFT_B > FedPFT_D > FedPFT_N"]["verdict"] == "held"
    assert minilm["FedPFT > FedOT"]["verdict"] == "held"  # FedOT from Table 1: 69.0 > 67.0
    assert minilm["FedPFT > FedOT"]["means"] == pytest.approx({"FedPFT": 69.0, "FedOT": 67.0})
    mpnet = judged(tree, runs, "table3", model="mpnet")
    assert mpnet["FedPFT > FedPFT_B > FedPFT_D > FedPFT_N"]["verdict"] == "not held"
    assert mpnet["FedPFT > FedOT"]["verdict"] == "not held"
    table4 = judged(tree, runs, "table4")
    assert table4["the optimum of t is 10"]["verdict"] == "held"
    assert table4["the optimum of p is 0.5"]["verdict"] == "not held"


def test_markdown_claim_lines(tree, runs):
    text = make_tables.render(tree, runs, ["table1", "table2"])
    assert (
        "- minilm · bbc · IID: FedPETuning ≥ FedPFT > FedOT — **held**, within noise: FedPETuning 90.0 ≥ FedPFT 89.0 "
        "(+1.0, std 2.0); FedPFT 89.0 > FedOT 81.0 (+8.0, std 1.4) [paper: BERT held, RoBERTa held]"
    ) in text
    assert "- minilm · bbc-pairs · IID: FedPETuning ≥ FedPFT > FedOT — **not held**: " in text
    assert "FedPFT 61.0 > FedOT 67.0 (-6.0, std 1.4) ✗" in text
    assert "α=5: FedPETuning ≥ FedPFT > FedOT — n/a (missing: FedOT)" in text
    # the paper's own Table 2 BERT SST-2 numbers at α=5 have FedPFT above FedPETuning
    assert "[paper: BERT not held, RoBERTa held]" in text
    table4 = make_tables.render(tree, runs, ["table4"])
    assert (
        "the optimum of p is 0.5 — **not held**: p=0.5 69.0 > p=0.3 72.0 (-3.0, std 1.4) ✗; p=0.5 69.0 > p=0.8"
        in table4
    )


def test_missing_tables_and_root(tmp_path, capsys):
    write_cell(tmp_path / "res", "table1/minilm/bbc/iid/FedPFT", [0.8])
    assert make_tables.main(["--root", str(tmp_path / "res"), "--tables", "1", "2"]) == 0
    assert "_Table 2: no runs under" in capsys.readouterr().out
    for empty in (tmp_path / "absent", tmp_path):  # a missing root; a root without table folders
        assert make_tables.main(["--root", str(empty)]) == 2
        assert capsys.readouterr().err.startswith("error: no runs under")
    assert plot_results.main(["--root", str(tmp_path / "absent"), "--out", str(tmp_path / "img")]) == 2


def test_plots_written(tree, tmp_path):
    written, notes = plot_results.write_plots(tree, tmp_path)
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
    curve = plot_results.method_curves(make_tables.load_runs(tree).query("table == 'table1' and task == 'bbc'"))
    assert curve["FedPETuning"]["mean"].iloc[-1] == pytest.approx(90.0)
    assert curve["FedPETuning"]["mb"].iloc[-1] == pytest.approx((SENT + RECEIVED) * ROUNDS / 1e6)
    fedpft = make_tables.load_runs(tree).query("table == 'table1' and task == 'bbc'")
    assert plot_results.alignment_rounds(fedpft) == [2, 4]


def test_plot_skips_missing_data(tmp_path):
    write_run(tmp_path / "res", "table1/minilm/bbc/iid/FedPFT", 1, 0.8, finished=False)
    written, notes = plot_results.write_plots(tmp_path / "res", tmp_path / "img")
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
