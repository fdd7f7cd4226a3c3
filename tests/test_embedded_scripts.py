"""The embedded table scripts (scripts/embedded/table{1,2,3,4,5}.sh, ceiling.sh, all.sh) with --dry-run: every cell of each
table, five seeds where the claims live (Table 1's text rows, Table 3) and three elsewhere, its own output root,
`--resume auto`, the method flags of spec §4.13, and the public corpus of each task."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "embedded"


def dry(table: str, tmp_path: Path, **env: str) -> list[str]:
    results = tmp_path / "r"
    before = sorted(results.rglob("*")) if results.exists() else None
    done = subprocess.run(
        ["bash", str(SCRIPTS / f"{table}.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RESULTS": str(results), **env},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (sorted(results.rglob("*")) if results.exists() else None) == before  # a dry run writes nothing
    return [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]


def runs(lines: list[str]) -> list[dict]:
    """fedtune command lines as {cell, seed, flags}."""
    found = []
    for line in lines:
        if "fedtune" not in line:
            continue
        args = line.split()
        flags = {}
        for i, tok in enumerate(args):
            if tok.startswith("--"):
                flags[tok] = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
        found.append(flags)
    return found


def cell(flags: dict, root: Path) -> str:
    return str(Path(flags["--output_root"]).relative_to(root / "r"))


def test_table1_cells_seeds_and_fedot_with_and_without_distillation(tmp_path):
    lines = dry("table1", tmp_path)
    fed = runs(lines)
    cells = {cell(f, tmp_path) for f in fed}
    for task in ("minilm/wiki-topics", "minilm/wiki-pairs", "vit-tiny/mnist"):
        for method in ("FedPETuning", "FedOT", "FedOT-noKD", "FedPFT"):
            assert f"table1/{task}/iid/{method}" in cells
    assert not any("bbc" in c for c in cells)  # the BBC block is opt-in (BBC=1)
    assert all(f["--resume"] == "auto" for f in fed)
    text = [f for f in fed if f["--task_name"].startswith("wiki-")]
    assert len(text) == 8 * 5 and {f["--seed"] for f in text} == {"1", "2", "3", "4", "5"}
    assert len(fed) - len(text) == 4 * 3 and {f["--seed"] for f in fed if f not in text} == {"1", "2", "3"}
    # the Wikipedia tasks distil and align on the Wikipedia corpus no task uses
    assert {f["--distill_dataset1_path"] for f in text} == {"datasets/wiki-corpus"}
    fedot = {cell(f, tmp_path).split("/")[-1]: f["--sub_model_checkpoint"] for f in text if f["--method"] == "fedot"}
    assert fedot["FedOT"].endswith("emulator-distilled-wiki") and "emulator-distilled" not in fedot["FedOT-noKD"]
    # the emulator gets the sub-FM's distillation budget: the same corpus, epochs and batch
    kd = [line for line in lines if "distill" in line and "--distill True" in line and "MiniLM" in line]
    shape = r"--(layers_retained \S+ \S+|qk_rank \S+|intermediate_rank \S+|emulator_layers \S+|adapter_layers \S+ \S+|output_dir \S+)"
    strip = [re.sub(shape, "", k).split() for k in kd]
    assert len(kd) == 2 and strip[0] == strip[1]
    assert strip[0][strip[0].index("--dataset1_path") + 1] == "datasets/wiki-corpus"
    assert strip[0][strip[0].index("--distill_epoch") + 1] == "5"
    # the text rows evaluate the FM every 5th round (and the last); the client model only on request
    assert {f["--eval_interval"] for f in text} == {"5"} and {f["--eval_sub_model"] for f in fed} == {"False"}
    assert {f["--proportion"] for f in fed} == {"0.1"}  # 2 of 20 clients per round, the paper's 10 %
    assert {f["--eval_sub_model"] for f in runs(dry("table1", tmp_path, EVAL_SUB_MODEL="True")) if f in text} <= {
        "True"
    }


def test_table1_bbc_block_is_opt_in_and_keeps_its_settings(tmp_path):
    fed = [f for f in runs(dry("table1", tmp_path, VISION="0", BBC="1")) if f["--task_name"].startswith("bbc")]
    assert len(fed) == 8 * 3 and {f["--seed"] for f in fed} == {"1", "2", "3"}
    assert {f["--distill_dataset1_path"] for f in fed} == {"datasets/bbc-corpus"}
    assert all("--eval_interval" not in f for f in fed)  # every round, as its committed runs
    assert {f["--sub_model_checkpoint"] for f in fed if f["--method"] == "pft"} == {
        str(tmp_path / "r" / "models" / "minilm" / "sub-distilled")
    }


def test_ceiling_is_one_centralised_fine_tune_per_task(tmp_path):
    fed = runs(dry("ceiling", tmp_path))
    assert sorted(cell(f, tmp_path) for f in fed) == [
        f"ceiling/minilm/{t}/centralised/FedPETuning" for t in ("wiki-pairs", "wiki-topics")
    ]
    for f in fed:
        assert (f["--method"], f["--num_clients"], f["--proportion"], f["--num_rounds"]) == ("peft", "1", "1", "5")


def test_table1_paper_shape_row_is_opt_in(tmp_path):
    assert not any("mpnet" in line for line in dry("table1", tmp_path, VISION="0"))
    fed = runs(dry("table1", tmp_path, VISION="0", PAPER_SHAPE="1"))
    assert {f["--distill_dataset1_path"] for f in fed if "mpnet" in f["--model_checkpoint"]} == {"datasets/bbc-corpus"}
    mpnet = [f for f in fed if "mpnet" in f["--model_checkpoint"]]
    assert len(mpnet) == 4 * 3 and {f["--seed"] for f in mpnet} == {"1", "2", "3"}
    assert {f["--num_rounds"] for f in mpnet} == {"20"}
    one = runs(dry("table1", tmp_path, VISION="0", PAPER_SHAPE="1", MPNET_SEEDS="1"))
    assert {f["--seed"] for f in one if "mpnet" in f["--model_checkpoint"]} == {"1"}


def test_table2_dirichlet_cells(tmp_path):
    fed = runs(dry("table2", tmp_path))
    assert len(fed) == 2 * 3 * 3 * 3
    for f in fed:
        setting = cell(f, tmp_path).split("/")[3]
        assert f["--partitioner"] == "dir" and setting == f"dir{f['--dir_alpha']}"
    # rounds 15 and 30; round 0 is Table 1's of the seed
    assert {(f["--eval_interval"], f["--eval_round_zero"]) for f in fed} == {("15", "False")}
    # the BBC block (opt-in) keeps the every-5th-round evaluation of its committed runs, unless told otherwise
    bbc = [f for f in runs(dry("table2", tmp_path, BBC="1")) if f["--task_name"].startswith("bbc")]
    assert len(bbc) == 54 and {f["--eval_interval"] for f in bbc} == {"5"}
    assert all("--eval_round_zero" not in f for f in bbc)
    bbc = [f for f in runs(dry("table2", tmp_path, BBC="1", EVAL_INTERVAL="3")) if f["--task_name"].startswith("bbc")]
    assert {f["--eval_interval"] for f in bbc} == {"3"}


def test_table3_ablation_rows(tmp_path):
    fed = runs(dry("table3", tmp_path))
    rows = {cell(f, tmp_path).split("/")[-1]: f for f in fed}
    assert len(fed) == 5 * 5  # five seeds
    bbc = [f for f in runs(dry("table3", tmp_path, BBC="1")) if f["--task_name"] == "bbc-pairs"]
    assert len(bbc) == 5 * 3  # the BBC block keeps its three
    distilled = {m: f["--sub_model_checkpoint"].endswith("-distilled-wiki") for m, f in rows.items()}
    assert distilled == {"FedOT": True, "FedPFT_N": False, "FedPFT_B": True, "FedPFT_D": False, "FedPFT": True}
    assert {m: rows[m]["--align_interval"] for m in ("FedPFT_N", "FedPFT_B", "FedPFT_D", "FedPFT")} == {
        "FedPFT_N": "0",
        "FedPFT_B": "0",
        "FedPFT_D": "10",
        "FedPFT": "10",
    }


@pytest.mark.parametrize(
    ("setting", "interval", "retained"),
    [("t5", "5", "0.5"), ("t10", "10", "0.5"), ("t20", "20", "0.5"), ("p0.3", "10", "0.7"), ("p0.8", "10", "0.2")],
)
def test_table4_interval_and_proportion(tmp_path, setting, interval, retained):
    fed = [f for f in runs(dry("table4", tmp_path)) if cell(f, tmp_path).split("/")[3] == setting]
    assert len(fed) == 3
    for f in fed:  # p = 1 - retained ratio; t is given once
        assert f["--align_interval"] == interval and f["--align_retained_ratio"] == retained


def test_no_two_tables_share_an_output_root(tmp_path):
    roots = {t: {cell(f, tmp_path) for f in runs(dry(t, tmp_path))} for t in ("table1", "table2", "table3", "table4")}
    for t, cells in roots.items():
        assert all(c.startswith(f"{t}/") for c in cells)


def test_an_interrupted_distillation_resumes_from_its_latest_checkpoint(tmp_path):
    models = tmp_path / "r" / "models"
    (models / "minilm" / "sub-distilled-wiki").mkdir(parents=True)  # finished: reused, not rerun
    (models / "minilm" / "sub-distilled-wiki" / "distill_summary.json").write_text("{}")
    (models / "minilm" / "emulator-distilled-wiki").mkdir(parents=True)  # never reached a checkpoint: redone
    for step, complete in ((3, True), (6, False)):  # checkpoint-6 lacks its training state: not a resume point
        checkpoint = models / "mpnet" / "sub-distilled" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "training_state.pt").write_bytes(b"")
    kd = {}
    for line in dry("table1", tmp_path, VISION="0", PAPER_SHAPE="1"):
        if "--distill True" in line:
            args = line.split()
            kd[Path(args[args.index("--output_dir") + 1]).relative_to(models).as_posix()] = args
    assert sorted(kd) == ["minilm/emulator-distilled-wiki", "mpnet/emulator-distilled", "mpnet/sub-distilled"]
    resumed = kd["mpnet/sub-distilled"]
    assert resumed[resumed.index("--resume_from_checkpoint") + 1] == str(models / "mpnet/sub-distilled/checkpoint-3")
    assert "--overwrite" not in resumed
    redone = kd["minilm/emulator-distilled-wiki"]
    assert redone[redone.index("--overwrite") + 1] == "True" and "--resume_from_checkpoint" not in redone
    fresh = kd["mpnet/emulator-distilled"]
    assert "--overwrite" not in fresh and "--resume_from_checkpoint" not in fresh
    assert all(a[a.index("--save_total_limit") + 1] == "1" for a in kd.values())


def _finish_table1_runs(tmp_path: Path, methods: tuple[str, ...]) -> dict[tuple[str, str], Path]:
    """Table 1's wiki-pairs runs of `methods` as finished run folders, written where fedtune.py would put them, with
    the config.json it would record (from the dry run's own command lines); {(method, seed): folder}."""
    folders = {}
    for line in dry("table1", tmp_path, VISION="0"):
        argv = shlex.split(line)
        if not argv[1].endswith("fedtune.py") or "--task_name wiki-pairs" not in line:
            continue
        if Path(argv[argv.index("--output_root") + 1]).name not in methods:
            continue
        s, folder = tiny.write_finished_run(argv[2:])
        folders[Path(s.output_root).name, str(s.seed)] = folder
    assert len(folders) == 5 * len(methods)
    return folders


def test_tables_3_and_4_borrow_table1s_finished_runs_of_the_same_training(tmp_path):
    folders = _finish_table1_runs(tmp_path, ("FedOT", "FedPFT"))
    table3 = {cell(f, tmp_path) for f in runs(dry("table3", tmp_path))}
    assert table3 == {f"table3/minilm/wiki-pairs/iid/{m}" for m in ("FedPFT_N", "FedPFT_B", "FedPFT_D")}
    table4 = {cell(f, tmp_path).split("/")[3] for f in runs(dry("table4", tmp_path))}
    assert table4 == {"t5", "t20", "p0.3", "p0.8"}
    # one seed unfinished: the table runs that cell itself, every seed, under its own root
    (folders["FedPFT", "5"] / "summary.json").write_text('{"finished": false}')
    fed = runs(dry("table3", tmp_path))
    own = sorted(f["--seed"] for f in fed if cell(f, tmp_path) == "table3/minilm/wiki-pairs/iid/FedPFT")
    assert own == ["1", "2", "3", "4", "5"]
    assert "table3/minilm/wiki-pairs/iid/FedOT" not in {cell(f, tmp_path) for f in fed}
    # Table 4 (three seeds) still borrows: seeds 1-3 of Table 1's FedPFT are finished, seed 5 is not
    assert "t10" not in {cell(f, tmp_path).split("/")[3] for f in runs(dry("table4", tmp_path))}
    # a training flag recorded differently (not one the run name shows) is not the same training
    config = folders["FedOT", "2"] / "config.json"
    recorded = json.loads(config.read_text())
    recorded["args"]["max_length"] = 64
    config.write_text(json.dumps(recorded))
    assert "table3/minilm/wiki-pairs/iid/FedOT" in {cell(f, tmp_path) for f in runs(dry("table3", tmp_path))}
    # more seeds than Table 1 has: run here
    assert "t10" in {cell(f, tmp_path).split("/")[3] for f in runs(dry("table4", tmp_path, SEEDS="1 2 3 4 5 6"))}


def test_same_run_compares_training_flags_and_paths_by_their_last_two_parts():
    from scripts.same_run import differences

    here = {"sub_model_checkpoint": "/work/a/results/embedded/models/minilm/sub-distilled", "seed": 1}
    there = {"sub_model_checkpoint": "/home/u/b/results/embedded/models/minilm/sub-distilled", "seed": 1}
    assert differences({**here, "eval_interval": 1}, {**there, "eval_interval": 5, "eval_round_zero": False}) == []
    # a run recorded before --lora_ffn existed trained without it
    assert differences(here, {**there, "lora_ffn": False}) == []
    assert differences(here, {**there, "lora_ffn": True}) == ["lora_ffn"]
    assert differences(here, {**there, "sub_model_checkpoint": "/x/minilm/sub-other"}) == ["sub_model_checkpoint"]
    assert differences(here, {**there, "seed": 2, "lora_rank": 8}) == ["lora_rank", "seed"]


def test_table5_a_decoder_llm(tmp_path):
    """SmolLM2 on wiki-qa: four methods x three seeds, IID; the sub-FM and the emulator distilled with one budget
    (no FFN weight term); the FM evaluated at the last round, the untuned FM once; NONIID=1 adds FedPETuning and
    FedPFT on Dir(1) over the topics."""
    lines = dry("table5", tmp_path)
    distils = [line for line in lines if "distill.py" in line]
    assert len(distils) == 2 and all("--distill_alpha 0 " in d and "--max_steps 50 " in d for d in distils)
    # the two distillations run side by side: their lines come in either order
    assert sorted("--emulator_layers 18" in d for d in distils) == [False, True]
    assert sorted("--layers_retained 0 29" in d for d in distils) == [False, True]
    fed = runs(lines)
    assert len(fed) == 4 * 3 and {cell(f, tmp_path).split("/")[3] for f in fed} == {"iid"}
    assert {f["--task_name"] for f in fed} == {"wiki-qa"} and {f["--num_rounds"] for f in fed} == {"10"}
    assert {f["--eval_interval"] for f in fed} == {"10"} and {f["--max_eval_samples"] for f in fed} == {"0"}
    zero = [(cell(f, tmp_path).split("/")[4], f["--seed"]) for f in fed if f["--eval_round_zero"] == "True"]
    assert zero == [("FedPETuning", "1")]
    pft = [f for f in fed if f["--method"] == "pft"]
    assert {f["--align_interval"] for f in pft} == {"4"} and all(
        "sub-distilled-wiki" in f["--sub_model_checkpoint"] for f in pft
    )
    noniid = runs(dry("table5", tmp_path, NONIID="1"))
    extra = [f for f in noniid if f.get("--partitioner") == "dir"]
    assert len(extra) == 2 * 3 and {f["--method"] for f in extra} == {"peft", "pft"}


def test_all_runs_the_default_set_in_order(tmp_path):
    """all.sh: the ceilings, Tables 1, 3, 4 and 2 (Table 5 with TABLE5=1), each script's own command lines; TABLES
    picks some; an unknown name stops before anything runs."""
    lines = dry("all", tmp_path)
    roots = [cell(f, tmp_path).split("/")[0] for f in runs(lines)]
    order = [r for i, r in enumerate(roots) if i == 0 or roots[i - 1] != r]
    assert order == ["ceiling", "table1", "table3", "table4", "table2"]
    assert len(roots) == len(runs(dry("table1", tmp_path))) + sum(
        len(runs(dry(t, tmp_path))) for t in ("ceiling", "table2", "table3", "table4")
    )
    assert {cell(f, tmp_path).split("/")[0] for f in runs(dry("all", tmp_path, TABLES="4"))} == {"table4"}
    assert "table5" in {cell(f, tmp_path).split("/")[0] for f in runs(dry("all", tmp_path, TABLE5="1"))}
    bad = subprocess.run(["bash", str(SCRIPTS / "all.sh"), "--dry-run"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "RESULTS": str(tmp_path / "r"), "TABLES": "3 x"})  # fmt: skip
    assert bad.returncode == 2 and "TABLES takes ceiling and 1-5, got x" in bad.stderr and "table3" not in bad.stdout
