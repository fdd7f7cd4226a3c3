"""The paper-table scripts (scripts/paper/*.sh --dry-run) and the asset fetcher (scripts/fetch_paper_assets.py),
checked without assets, GPU or network: the cells, rows, seeds and rerun flags of every command line a table would
run, the distillation resume decisions, and the fetcher's offline failure."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sub_model_construct.sub_model import sub_model_name
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "scripts" / "paper"
FETCH = ROOT / "scripts" / "fetch_paper_assets.py"
TABLES = {
    "table1": "table1_iid.sh",
    "table2": "table2_noniid.sh",
    "table3": "table3_ablation.sh",
    "table4": "table4_parameters.sh",
}
MODELS = ("bert-base-uncased", "roberta-base")
SETTINGS = {
    "table1": {"iid"},
    "table2": {"dir1", "dir5", "dir10"},
    "table3": {"iid"},
    "table4": {"t5", "t10", "t20", "p0.3", "p0.8"},
}
METHODS = {
    "table1": {"FedPETuning", "FedOT", "FedOT-noKD", "FedPFT"},
    "table2": {"FedPETuning", "FedOT", "FedPFT"},
    "table3": {"FedOT", "FedPFT_N", "FedPFT_B", "FedPFT_D", "FedPFT"},
    "table4": {"FedPFT"},
}
# the variables the scripts read: a caller's values must not leak into the tests
SCRIPT_ENV = (
    "GPUS",
    "ROUNDS",
    "SEEDS",
    "MODELS",
    "TASKS",
    "ALPHAS",
    "RESULTS",
    "SUB_FMS",
    "PRETRAINED",
    "DATA",
    "PORT",
)


def dry_run(script: str, results: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    environment.update(RESULTS=str(results), NUM_PROC="4", **env)
    return subprocess.run(
        ["bash", str(PAPER / script), "--dry-run"], env=environment, capture_output=True, text=True, timeout=60
    )


def commands(script: str, results: Path, **env: str) -> list[list[str]]:
    done = dry_run(script, results, **env)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def runs_of(cmds: list[list[str]], program: str) -> list[list[str]]:
    return [c for c in cmds if any(token.endswith(program) for token in c)]


def flag(cmd: list[str], name: str) -> str | None:
    """The value of `name` (None when absent); a flag given twice is a bug argparse would hide (last wins)."""
    assert cmd.count(name) <= 1, f"{name} given twice in {shlex.join(cmd)}"
    return cmd[cmd.index(name) + 1] if name in cmd else None


def flags(cmd: list[str], name: str, count: int) -> list[str]:
    i = cmd.index(name)
    return cmd[i + 1 : i + 1 + count]


def cell_of(cmd: list[str], results: Path, table: str) -> tuple[str, str, str, str]:
    """(model, task, setting, method) from --output_root, which must be <results>/<table>/<model>/<task>/<setting>/<method>."""
    parts = Path(flag(cmd, "--output_root")).relative_to(results / table).parts
    assert len(parts) == 4, parts
    return parts


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("paper") / "results"


@pytest.fixture(scope="module")
def dry(results) -> dict[str, list[list[str]]]:
    return {table: commands(script, results) for table, script in TABLES.items()}


# ------------------------------------------------------------------------------------------------ every table
@pytest.mark.parametrize("table", TABLES)
def test_every_fedtune_run_resumes_automatically_in_its_own_cell(table, dry, results):
    runs = runs_of(dry[table], "fedtune.py")
    assert runs
    for cmd in runs:
        model, task, setting, method = cell_of(cmd, results, table)
        assert flag(cmd, "--resume") == "auto"
        assert Path(flag(cmd, "--model_checkpoint")).name == model
        assert flag(cmd, "--task_name") == task
        assert setting in SETTINGS[table] and method in METHODS[table]
        assert flag(cmd, "--num_rounds") == "100" and int(flag(cmd, "--num_rounds")) > 20
    cells = {cell_of(c, results, table) for c in runs}
    assert {m for m, *_ in cells} == set(MODELS)
    assert {(s, meth) for _, _, s, meth in cells} == {(s, m) for s in SETTINGS[table] for m in METHODS[table]}


@pytest.mark.parametrize("table", TABLES)
def test_every_cell_runs_three_seeds_by_default(table, dry, results):
    seeds = {}
    for cmd in runs_of(dry[table], "fedtune.py"):
        seeds.setdefault(cell_of(cmd, results, table), []).append(flag(cmd, "--seed"))
    assert all(sorted(s) == ["1", "2", "3"] for s in seeds.values()), seeds


def test_no_two_tables_share_a_run_folder(dry, results):
    roots = {
        table: {(flag(c, "--output_root"), flag(c, "--seed")) for c in runs_of(cmds, "fedtune.py")}
        for table, cmds in dry.items()
    }
    for table, cmds in dry.items():  # within a table: one command per (cell, seed)
        assert len(roots[table]) == len(runs_of(cmds, "fedtune.py"))
    folders = {table: {Path(r) for r, _ in pairs} for table, pairs in roots.items()}
    for a in folders:
        for b in folders:
            if a < b:  # no folder of one table is, contains or lies inside a folder of another
                for x in folders[a]:
                    for y in folders[b]:
                        assert not (x == y or x.is_relative_to(y) or y.is_relative_to(x)), (x, y)


def test_the_readme_settings_and_the_accelerate_launch(dry):
    for cmd in runs_of(dry["table1"], "fedtune.py"):
        assert cmd[1:9] == [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes=4",
            "--main_process_port",
            "25000",
            "--num_machines",
            "1",
        ]
        expected = {
            "--num_clients": "100",
            "--proportion": "0.1",
            "--learning_rate": "0.0008",
            "--lr_scheduler_type": "2",
            "--num_epochs": "1",
            "--per_device_train_batch_size": "4",  # x 4 processes x 1 = the README's effective batch 16
            "--gradient_accumulation_steps": "1",
            "--lora_rank": "8",
            "--lora_alpha": "48",
            "--eval_interval": "1",
            "--align_epochs": "0.02",
        }
        assert {k: flag(cmd, k) for k in expected} == expected


def test_one_gpu_keeps_the_effective_batches(results):
    cmds = commands("table4_parameters.sh", results, GPUS="1", MODELS="roberta-base")
    for cmd in cmds:
        assert "accelerate.commands.launch" not in cmd
    fed = runs_of(cmds, "fedtune.py")[0]
    assert flag(fed, "--per_device_train_batch_size") == "16" and flag(fed, "--gradient_accumulation_steps") == "1"
    distill = runs_of(cmds, "distill.py")[0]
    assert flag(distill, "--per_device_train_batch_size") == "32"
    assert flag(distill, "--gradient_accumulation_steps") == "32"  # 32 x 1 x 32 = 1024 sequences


@pytest.mark.parametrize("env", [{"GPUS": "3"}, {"ROUNDS": "20"}, {"ROUNDS": "abc"}])
def test_bad_settings_are_refused(env, results):
    done = dry_run("table1_iid.sh", results, **env)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("error:")


def test_seeds_and_models_from_the_environment(results):
    cmds = commands("table3_ablation.sh", results, SEEDS="7 8", MODELS="roberta-base")
    runs = runs_of(cmds, "fedtune.py")
    assert sorted({flag(c, "--seed") for c in runs}) == ["7", "8"] and len(runs) == 2 * 5
    assert {Path(flag(c, "--model_checkpoint")).name for c in runs} == {"roberta-base"}


def test_dry_run_writes_nothing(dry, results):
    assert not results.exists()


def test_every_command_line_parses_with_the_real_cli(dry):
    """Each flag exists and each value has the type its parser wants (argparse exits on a bad one)."""
    from federated_proxy_finetuning.fedtune import build_parser as fedtune_parser
    from sub_model_construct.distill import build_parser as distill_parser

    parsers = {"fedtune.py": fedtune_parser("text"), "distill.py": distill_parser("text")}
    for cmds in dry.values():
        for program, parser in parsers.items():
            for cmd in runs_of(cmds, program):
                script = next(i for i, token in enumerate(cmd) if token.endswith(program))
                args = parser.parse_args(cmd[script + 1 :])
                if program == "fedtune.py":
                    assert args.resume == "auto"


# ------------------------------------------------------------------------------------------------ rows
def sub_fms(results: Path, model: str) -> dict[str, str]:
    models = results / "models"
    plain = models / sub_model_name(f"pretrain_models/{model}", [0, 11], 768, 768)
    emulator = models / f"fedot-{model}-adapters11-emulator5"
    return {
        "plain": str(plain),
        "distilled": f"{plain}-distilled",
        "emulator": str(emulator),
        "emulator-distilled": f"{emulator}-distilled",
    }


def rows(cmds: list[list[str]], results: Path, table: str, model: str) -> dict[str, set]:
    """method -> {(--method, sub-FM kind, --align_interval, --align_retained_ratio)} over this model's runs."""
    kinds = {path: kind for kind, path in sub_fms(results, model).items()}
    found: dict[str, set] = {}
    for cmd in runs_of(cmds, "fedtune.py"):
        m, _, _, method = cell_of(cmd, results, table)
        if m == model:
            sub = flag(cmd, "--sub_model_checkpoint")
            row = (flag(cmd, "--method"), kinds.get(sub, sub), flag(cmd, "--align_interval"))
            found.setdefault(method, set()).add(row + (flag(cmd, "--align_retained_ratio"),))
    return found


@pytest.mark.parametrize("model", MODELS)
def test_table1_compares_fedot_with_and_without_its_distillation(model, dry, results):
    assert rows(dry["table1"], results, "table1", model) == {
        "FedPETuning": {("peft", None, None, None)},
        "FedOT": {("fedot", "emulator-distilled", None, None)},
        "FedOT-noKD": {("fedot", "emulator", None, None)},
        "FedPFT": {("pft", "distilled", "10", "0.5")},
    }


@pytest.mark.parametrize("model", MODELS)
def test_table3_ablation_rows(model, dry, results):
    assert rows(dry["table3"], results, "table3", model) == {
        "FedOT": {("fedot", "emulator-distilled", None, None)},
        "FedPFT_N": {("pft", "plain", "0", "0.5")},
        "FedPFT_B": {("pft", "distilled", "0", "0.5")},
        "FedPFT_D": {("pft", "plain", "10", "0.5")},
        "FedPFT": {("pft", "distilled", "10", "0.5")},
    }
    for cmd in runs_of(dry["table3"], "fedtune.py"):
        assert flag(cmd, "--task_name") == "qnli" and flag(cmd, "--partitioner") == "iid"


def test_table4_interval_and_updated_proportion(dry, results):
    expected = {
        "t5": ("5", "0.5"),
        "t10": ("10", "0.5"),
        "t20": ("20", "0.5"),
        "p0.3": ("10", "0.7"),
        "p0.8": ("10", "0.2"),
    }
    for cmd in runs_of(dry["table4"], "fedtune.py"):
        model, task, setting, method = cell_of(cmd, results, "table4")
        interval, retained = flag(cmd, "--align_interval"), flag(cmd, "--align_retained_ratio")
        assert (interval, retained) == expected[setting]
        if setting.startswith("p"):  # p = 1 - align_retained_ratio (spec §4.10)
            assert float(setting[1:]) == pytest.approx(1 - float(retained))
        assert flag(cmd, "--sub_model_checkpoint") == sub_fms(results, model)["distilled"]
        assert (task, method, flag(cmd, "--method")) == ("qnli", "FedPFT", "pft")


def test_table2_dirichlet_settings(dry, results):
    for cmd in runs_of(dry["table2"], "fedtune.py"):
        model, task, setting, method = cell_of(cmd, results, "table2")
        assert task in ("sst2", "qnli")
        assert flag(cmd, "--partitioner") == "dir"
        assert float(flag(cmd, "--dir_alpha")) == float(setting.removeprefix("dir"))
        if method == "FedOT":
            assert flag(cmd, "--sub_model_checkpoint") == sub_fms(results, model)["emulator-distilled"]


def finish_table1(results: Path, **env: str) -> dict[tuple[str, str, str], Path]:
    """Table 1's QNLI FedOT and FedPFT runs as finished run folders where fedtune.py would write them, with the
    config.json it would record (from the dry run's own command lines); {(model, method, seed): folder}."""
    folders = {}
    for cmd in runs_of(commands("table1_iid.sh", results, **env), "fedtune.py"):
        model, task, _, method = cell_of(cmd, results, "table1")
        if task != "qnli" or method not in ("FedOT", "FedPFT"):
            continue
        script = next(i for i, token in enumerate(cmd) if token.endswith("fedtune.py"))
        s, folder = tiny.write_finished_run(cmd[script + 1 :])
        folders[model, method, str(s.seed)] = folder
    return folders


def test_tables_3_and_4_do_not_rerun_table1s_finished_runs(tmp_path):
    results = tmp_path / "results"
    folders = finish_table1(results, MODELS="roberta-base")
    assert len(folders) == 2 * 3
    done = dry_run("table3_ablation.sh", results, MODELS="roberta-base")
    table3 = {
        cell_of(c, results, "table3")[3]
        for c in runs_of([shlex.split(x) for x in done.stdout.splitlines()], "fedtune.py")
    }
    assert table3 == {"FedPFT_N", "FedPFT_B", "FedPFT_D"}
    assert "table3/roberta-base/qnli/iid/FedPFT: Table 1's finished runs (seeds 1 2 3)" in done.stderr
    table4 = {
        cell_of(c, results, "table4")[2]
        for c in runs_of(commands("table4_parameters.sh", results, MODELS="roberta-base"), "fedtune.py")
    }
    assert table4 == {"t5", "t20", "p0.3", "p0.8"}
    # a seed Table 1 lacks, or a different training flag: the table runs the cell itself, every seed
    more = runs_of(commands("table4_parameters.sh", results, MODELS="roberta-base", SEEDS="1 2 3 4"), "fedtune.py")
    assert sorted(flag(c, "--seed") for c in more if cell_of(c, results, "table4")[2] == "t10") == ["1", "2", "3", "4"]
    config = folders["roberta-base", "FedOT", "2"] / "config.json"
    recorded = json.loads(config.read_text())
    recorded["args"]["lora_alpha"] = 16.0
    config.write_text(json.dumps(recorded))
    table3 = {
        cell_of(c, results, "table3")[3]
        for c in runs_of(commands("table3_ablation.sh", results, MODELS="roberta-base"), "fedtune.py")
    }
    assert "FedOT" in table3 and "FedPFT" not in table3


# ------------------------------------------------------------------------------------------------ distillation
def test_emulator_is_distilled_with_the_sub_fm_budget(dry, results):
    distills = runs_of(dry["table1"], "distill.py")
    assert len(distills) == 2 * len(MODELS)
    budget = (
        "--distill",
        "--per_device_train_batch_size",
        "--gradient_accumulation_steps",
        "--learning_rate",
        "--lr_scheduler_type",
        "--warm_up_ratio",
        "--distill_epoch",
        "--distill_alpha",
        "--dataset1_path",
        "--dataset2_path",
    )
    for model in MODELS:
        names = sub_fms(results, model)
        of_model = [c for c in distills if Path(flag(c, "--model_checkpoint")).name == model]
        sub = next(c for c in of_model if flag(c, "--output_dir") == names["distilled"])
        emulator = next(c for c in of_model if flag(c, "--output_dir") == names["emulator-distilled"])
        assert flags(sub, "--layers_retained", 2) == ["0", "11"] and flag(sub, "--intermediate_rank") == "768"
        assert flag(emulator, "--emulator_layers") == "5" and flags(emulator, "--adapter_layers", 2) == ["1", "1"]
        assert {k: flag(sub, k) for k in budget} == {k: flag(emulator, k) for k in budget}
        assert flag(sub, "--distill") == "True" and flag(sub, "--learning_rate") == "6e-4"
        for cmd in (sub, emulator):  # the undistilled folder lands beside it, in the shared models folder
            assert flag(cmd, "--sub_model_dir") == str(results / "models")
    # every table builds before it tunes, and builds only what it uses
    first_fedtune = next(i for i, c in enumerate(dry["table1"]) if any(t.endswith("fedtune.py") for t in c))
    assert all(i < first_fedtune for i, c in enumerate(dry["table1"]) if any(t.endswith("distill.py") for t in c))
    assert all(flag(c, "--emulator_layers") is None for c in runs_of(dry["table4"], "distill.py"))


def test_distillation_is_skipped_resumed_or_redone(tmp_path):
    results = tmp_path / "results"
    names = {model: sub_fms(results, model) for model in MODELS}
    roberta, bert = names["roberta-base"], names["bert-base-uncased"]
    # roberta sub-FM: finished (summary + undistilled weights) -> skipped
    for folder, file in ((roberta["distilled"], "distill_summary.json"), (roberta["plain"], "model.safetensors")):
        Path(folder).mkdir(parents=True)
        (Path(folder) / file).write_text("{}")
    # roberta emulator: interrupted; checkpoint-10 lacks its training state -> resume from checkpoint-5
    for step, complete in ((5, True), (10, False)):
        checkpoint = Path(roberta["emulator-distilled"]) / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "training_state.pt").write_bytes(b"")
    # bert sub-FM: interrupted before its first checkpoint -> distilled again with --overwrite
    Path(bert["distilled"]).mkdir(parents=True)
    # bert emulator: distilled, but its undistilled folder was deleted -> construction only
    Path(bert["emulator-distilled"]).mkdir(parents=True)
    (Path(bert["emulator-distilled"]) / "distill_summary.json").write_text("{}")

    done = dry_run("table1_iid.sh", results)
    assert done.returncode == 0, done.stderr
    distills = runs_of([shlex.split(line) for line in done.stdout.splitlines()], "distill.py")
    by_output = {flag(c, "--output_dir"): c for c in distills}
    assert roberta["distilled"] not in by_output and "distilled already" in done.stderr
    resumed = by_output[roberta["emulator-distilled"]]
    assert flag(resumed, "--resume_from_checkpoint") == str(Path(roberta["emulator-distilled"]) / "checkpoint-5")
    assert flag(resumed, "--overwrite") is None
    redone = by_output[bert["distilled"]]
    assert flag(redone, "--overwrite") == "True" and flag(redone, "--resume_from_checkpoint") is None
    constructed = by_output[None]
    assert flag(constructed, "--distill") is None and flag(constructed, "--emulator_layers") == "5"
    assert Path(flag(constructed, "--model_checkpoint")).name == "bert-base-uncased"
    assert len(distills) == 3
    assert runs_of([shlex.split(line) for line in done.stdout.splitlines()], "fedtune.py")  # the runs still follow


# ------------------------------------------------------------------------------------------------ fetch_paper_assets.py
@functools.cache
def fetch_module():
    """scripts/ is not a package: load the script as a module (registered first, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location("fetch_paper_assets", FETCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_fetch(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    environment.pop("HF_HUB_OFFLINE", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(FETCH), *args], env=environment, capture_output=True, text=True, timeout=60
    )


def test_fetch_list_names_every_asset(tmp_path):
    (tmp_path / "pretrain_models" / "roberta-base").mkdir(parents=True)
    (tmp_path / "pretrain_models" / "roberta-base" / "config.json").write_text("{}")
    done = run_fetch("--list", "--root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:] if not line.startswith("groups")}
    assert set(fetch_module().BY_NAME) == set(lines)
    assert lines["roberta-base"] == "present" and lines["wikipedia"] == "missing" and lines["imagenet"] == "manual"
    for name in ("bert-base-uncased", "vit-base-patch16-224-in21k", "sst2", "qnli", "mnli", "qqp", "cifar-10",
                 "cifar-100", "flowers-102", "bookcorpus"):  # fmt: skip
        assert name in lines


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}])
def test_fetch_without_network_fails_fast_with_one_line_per_asset(env, tmp_path):
    (tmp_path / "datasets" / "glue" / "sst2").mkdir(parents=True)  # placed by hand: reported present, not an error
    (tmp_path / "datasets" / "glue" / "sst2" / "dataset_dict.json").write_text("{}")
    start = time.monotonic()
    done = run_fetch("--root", str(tmp_path), **env)
    assert time.monotonic() - start < 10
    assert done.returncode != 0
    wanted = [a for a in fetch_module().ASSETS if not a.manual and a.name != "sst2"]
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(wanted)
    for asset, line in zip(wanted, errors):
        assert line.startswith(f"error: {asset.name} not fetched") and f"in {asset.folder}/ by hand" in line
    assert "ok: sst2 present" in done.stdout
    assert not (tmp_path / "pretrain_models" / "roberta-base").exists()


def test_fetch_only_and_unknown_names(tmp_path):
    done = run_fetch("--root", str(tmp_path), "--only", "glue", "roberta-base", HF_HUB_OFFLINE="1")
    assert [line.split()[1] for line in done.stderr.splitlines()] == ["roberta-base", "sst2", "qnli", "mnli", "qqp"]
    done = run_fetch("--root", str(tmp_path), "--only", "glue2")
    assert done.returncode != 0 and "unknown asset 'glue2'" in done.stderr


def test_fetch_tries_the_next_source_and_marks_the_folder(tmp_path, monkeypatch):
    fetch = fetch_module()
    asset = fetch.BY_NAME["bookcorpus"]
    tried = []

    def fake_dataset(source, partial, cache):
        tried.append(source)
        if len(tried) == 1:
            raise RuntimeError("Dataset scripts are no longer supported\nmore detail")
        partial.mkdir(parents=True)
        (partial / "dataset_dict.json").write_text("{}")

    monkeypatch.setattr(fetch, "_fetch_dataset", fake_dataset)
    source = fetch.fetch(asset, tmp_path)
    assert source == asset.sources[1] and tried == list(asset.sources[:2])
    target = tmp_path / asset.folder
    assert json.loads((target / fetch.MARKER).read_text())["source"] == source.describe()
    assert not target.with_name(target.name + ".partial").exists()
    assert fetch.is_present(asset, tmp_path)

    def failing(source, partial, cache):
        raise ValueError("gone")

    monkeypatch.setattr(fetch, "_fetch_dataset", failing)
    with pytest.raises(fetch.FetchError, match="gone; .*gone"):
        fetch.fetch(fetch.BY_NAME["wikipedia"], tmp_path)
