"""Bad input gets one `error:` line and nothing breaks half-way (docs/errors.md), for the four command lines:
every flag at its boundaries, damaged input files and caches, outputs that cannot be written, non-finite losses
(with two processes), SIGINT/SIGTERM and resume, extending a finished run, one run per folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sub_model_construct.cli import UsageError, run_cli, str2bool
from sub_model_construct.settings import DistillSettings
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
FEDTUNE = ROOT / "federated_proxy_finetuning" / "fedtune.py"
ENV = tiny.subprocess_env()
# boundary values of the table: zero, negative, NaN, infinite, huge (as an integer and as a float), the wrong type
VALUES = ("0", "-1", "nan", "inf", "1" + "0" * 30, "1e30", "abc")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny BERT and ViT FM with their sub-FMs, a 3-class text task, a 2-class image task and public corpora."""
    from scripts.equality_check import build_assets

    root = tmp_path_factory.mktemp("bad-input")
    build_assets(root)
    return root


def base_args(assets: Path, program: str) -> list[str]:
    if program == "distill-text":
        return [
            "--model_checkpoint",
            str(assets / "text-fm"),
            "--layers_retained",
            "0",
            "3",
            "--intermediate_rank",
            "16",
        ]
    if program == "distill-image":
        return [
            "--model_checkpoint",
            str(assets / "image-fm"),
            "--layers_retained",
            "0",
            "3",
            "--intermediate_rank",
            "16",
        ]
    if program == "fedtune-text":
        return [
            "--model_checkpoint",
            str(assets / "text-fm"),
            "--task_name",
            "bbc",
            "--dataset_path",
            str(assets / "data"),
        ]
    return [
        "--model_checkpoint",
        str(assets / "image-fm"),
        "--task_name",
        "images",
        "--dataset_path",
        str(assets / "images"),
    ]


PROGRAMS = ("distill-text", "distill-image", "fedtune-text", "fedtune-image")


def program_parts(program: str):
    """(parser, settings class, the flag checker of that command line)."""
    from federated_proxy_finetuning import fedtune
    from federated_proxy_finetuning.settings import FedSettings
    from sub_model_construct import distill

    tool, modality = program.split("-")
    if tool == "distill":
        return distill.build_parser(modality), DistillSettings, lambda argv: distill.check_flags(argv, modality)
    return fedtune.build_parser(modality), FedSettings, lambda argv: fedtune.check_flags(argv, modality)


def fields_by_flag(cls) -> dict[str, dataclasses.Field]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            out.update(fields_by_flag(f.metadata["cls"]))
        else:
            out[f.metadata.get("flag") or f.name] = f
    return out


def number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return None


def outcome(check, argv: list[str], capfd) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of the command line's own checks run through run_cli, in this process."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: check(argv) and 0)
    return exited.value.code or 0, [line for line in capfd.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_flag_at_its_boundaries_runs_or_is_one_error_line(assets, program, tmp_path, monkeypatch, capfd):
    """Every flag of the command line, at 0, -1, NaN, inf, a huge integer, a huge float and a word: either the
    command line's checks accept it (and then a number lies inside the flag's documented range) or they exit with
    status 2 and one `error:` line naming the flag; nothing is written."""
    parser, settings_cls, check = program_parts(program)
    fields = fields_by_flag(settings_cls)
    monkeypatch.chdir(tmp_path)
    problems, accepted, refused = [], 0, 0
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        field = fields[flag[2:]]
        for value in VALUES:
            given = [value] * (action.nargs if isinstance(action.nargs, int) else 1)
            code, lines = outcome(check, [*base_args(assets, program), flag, *given], capfd)
            where = f"{flag} {value}"
            if code == 0:
                accepted += 1
                if lines:
                    problems.append(f"{where}: accepted but said {lines}")
                default = field.default[0] if isinstance(field.default, tuple) and field.default else field.default
                parse = field.metadata.get("parse")
                kind = parse if parse in (int, float) else {int: int, float: float}.get(type(default))
                valid = field.metadata.get("valid")
                if valid is not None and kind is not None and number(value, kind) not in valid and given:
                    problems.append(f"{where}: accepted outside the documented range {valid}")
                if field.default is not None and isinstance(field.default, bool):
                    str2bool(value)  # an accepted boolean is an honest one
            else:
                refused += 1
                if code != 2 or len(lines) != 1 or not lines[0].startswith("error:"):
                    problems.append(f"{where}: exit {code}, stderr {lines}")
                elif flag not in lines[0] and flag[2:] not in lines[0] and value not in lines[0]:
                    problems.append(f"{where}: the error does not name the flag: {lines[0]}")
    assert not problems, "\n".join(problems)
    assert accepted and refused
    assert list(tmp_path.iterdir()) == [], f"checks wrote {list(tmp_path.rglob('*'))}"


def test_every_numeric_flag_has_a_documented_range():
    from federated_proxy_finetuning.settings import FedSettings

    for cls in (DistillSettings, FedSettings):
        for flag, f in fields_by_flag(cls).items():
            default = f.default[0] if isinstance(f.default, tuple) and f.default else f.default
            parse = f.metadata.get("parse")
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool) or parse in (int, float)
            if numeric and f.metadata.get("command_line", True):
                assert f.metadata.get("valid") or f.metadata.get("choices"), f"--{flag} has no range"


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_shows_each_range(program):
    parser, settings_cls, _ = program_parts(program)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        field = fields_by_flag(settings_cls).get(action.option_strings[0][2:]) if action.option_strings else None
        if field is not None and field.metadata.get("valid") is not None:
            assert str(field.metadata["valid"]) in " ".join((action.help or "").split()), action.option_strings
            assert " ".join(str(field.metadata["valid"]).split()) in text


def test_flag_page_lists_the_ranges_of_the_code():
    """The table of flags and ranges in docs/flags.md is the one `scripts/flag_ranges.py` prints from the settings."""
    from scripts.flag_ranges import markdown_table

    page = (ROOT / "docs" / "flags.md").read_text()
    start = page.index("<!-- flag ranges: generated by scripts/flag_ranges.py -->")
    end = page.index("<!-- end of flag ranges -->")
    assert page[start:end].split("\n", 1)[1].strip() == markdown_table().strip()


# ----------------------------------------------------------------------------------------------- runs on the CLI
def fed_args(assets: Path, *extra: str) -> list[str]:
    return [
        *("--model_checkpoint", str(assets / "text-fm"), "--task_name", "bbc", "--dataset_path", str(assets / "data")),
        *("--num_clients", "4", "--proportion", "0.5", "--learning_rate", "5e-3", "--lora_rank", "4"),
        *(
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--per_device_eval_batch_size",
            "8",
        ),
        *("--method", "peft", "--seed", "7", "--eval_sub_model", "False"),
        *extra,
    ]


def pft_args(assets: Path, *extra: str) -> list[str]:
    return fed_args(
        assets,
        *("--method", "pft", "--sub_model_checkpoint", str(assets / "text-sub"), "--align_interval", "2"),
        *tiny.align_flags(assets / "corpus.txt"),
        *extra,
    )


def fedtune(cwd: Path, args: list[str], processes: int = 1, env: dict | None = None, timeout: int = 600):
    command = [sys.executable, str(FEDTUNE), *args]
    if processes > 1:
        command = [
            *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
            *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
            *("--main_process_port", str(free_port()), str(FEDTUNE), *args),
        ]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**ENV, **(env or {})}, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(done: subprocess.CompletedProcess, status: int = 2) -> str:
    """The run's one `error:` line: its last line on stderr (after any log lines), no traceback, exit `status`."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors(done.stderr)) == 1 and lines[-1].startswith("error:"), done.stderr[-3000:]
    return lines[-1]


def run_folder(cwd: Path) -> Path:
    (found,) = [p.parent for p in (cwd / "fed-result").glob("*/*/*/metrics.jsonl")]
    return found


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.get("clients") == rb.get("clients") and ra["learning_rate"] == rb["learning_rate"]
        assert ra["fm"]["eval_loss"] == pytest.approx(rb["fm"]["eval_loss"], abs=1e-6), ra["round"]
        assert ra["fm"]["eval_accuracy"] == rb["fm"]["eval_accuracy"]
        assert ra["bytes_sent_cumulative"] == rb["bytes_sent_cumulative"]


SIGNAL_RUN_ROUNDS = 10  # long enough that a signal sent a few round-times after round 2 lands inside a round


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory) -> list[dict]:
    """FedPETuning, SIGNAL_RUN_ROUNDS rounds with an exponential lr decay (its schedule does not depend on
    --num_rounds): the reference for the stopped run and, by its first rounds, for the extended one."""
    cwd = tmp_path_factory.mktemp("whole")
    done = fedtune(cwd, fed_args(assets, "--num_rounds", str(SIGNAL_RUN_ROUNDS)))
    assert done.returncode == 0, done.stderr
    return metrics(run_folder(cwd))


def metrics_lines(cwd: Path) -> int:
    found = list((cwd / "fed-result").glob("*/*/*/metrics.jsonl"))
    return len(found[0].read_text().splitlines()) if found else 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_round_stops_cleanly_and_resume_gives_the_uninterrupted_metrics(
    assets, uninterrupted, tmp_path, signum
):
    """The signal comes at a random moment between 0 and 3 round-times after round 2 is written (the round time
    is measured on this machine, round 2 itself), so it lands in round 3 to 6 of 10 however fast the machine is."""
    seed = random.randrange(10**6)
    share = random.Random(seed).uniform(0.0, 3.0)
    args = fed_args(assets, "--num_rounds", str(SIGNAL_RUN_ROUNDS))
    process = subprocess.Popen(
        [sys.executable, str(FEDTUNE), *args], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True
    )
    written = {}  # metrics lines (round 0 is the first) -> when they were first seen
    deadline = time.time() + 300
    while len(written) < 2 and time.time() < deadline and process.poll() is None:
        lines = metrics_lines(tmp_path)
        if lines in (2, 3) and lines not in written:
            written[lines] = time.monotonic()
        time.sleep(0.005)
    assert set(written) == {2, 3}, f"rounds 1 and 2 were not both seen while the run went on: {sorted(written)}"
    round_time = written[3] - written[2]
    moment = share * round_time
    time.sleep(moment)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    context = f"seed {seed}, {moment:.3f} s ({share:.2f} round-times of {round_time:.3f} s) after round 2\n"
    context += stderr[-3000:]
    assert process.returncode == 128 + signum, context
    (line,) = errors(stderr)
    assert f"interrupted by {signal.Signals(signum).name} during round" in line and "--resume True" in line, context
    folder = run_folder(tmp_path)
    last = max(int(p.name.removeprefix("checkpoint-round")) for p in (folder / "server").glob("checkpoint-round*"))
    assert f"checkpoint-round{last}" in line, context
    assert not list(folder.rglob(".*tmp*")) and not list(folder.parent.glob(".*.lock")), context
    resumed = fedtune(tmp_path, [*args, "--resume", "True"])
    assert resumed.returncode == 0, resumed.stderr
    same_metrics(metrics(folder), uninterrupted)


def test_a_finished_run_is_extended_where_the_schedule_allows_it(assets, uninterrupted, tmp_path):
    short = fedtune(tmp_path, fed_args(assets, "--num_rounds", "3"))
    assert short.returncode == 0, short.stderr
    before = (run_folder(tmp_path) / "metrics.jsonl").read_text()
    extended = fedtune(tmp_path, fed_args(assets, "--num_rounds", "5", "--resume", "True"))
    assert extended.returncode == 0, extended.stderr
    folders = sorted(p.parent for p in (tmp_path / "fed-result").glob("*/*/*/metrics.jsonl"))
    assert [p.name.split("-rounds")[1][0] for p in folders] == ["3", "5"]
    assert (folders[0] / "metrics.jsonl").read_text() == before  # the 3-round run is kept as it was
    same_metrics(metrics(folders[1]), uninterrupted[:6])  # rounds 0-5 of the longer reference
    assert json.loads((folders[1] / "summary.json").read_text())["finished"]


def test_extending_a_run_whose_schedule_depends_on_the_rounds_is_refused(assets, tmp_path):
    short = fedtune(tmp_path, fed_args(assets, "--num_rounds", "2", "--lr_scheduler_type", "2", "--eval_interval", "0"))
    assert short.returncode == 0, short.stderr
    refused = fedtune(tmp_path, fed_args(assets, "--num_rounds", "4", "--lr_scheduler_type", "2", "--resume", "True"))
    line = one_error(refused)
    assert "--lr_scheduler_type 2" in line and "depends on --num_rounds" in line
    assert len(list((tmp_path / "fed-result").glob("*/*/*"))) == 1


def test_non_finite_alignment_loss_on_one_of_two_processes_stops_both(assets, tmp_path):
    """NaN on process 1 only, in the first alignment (round 2): both processes stop with the same error (no one
    waits for the other in a collective), naming stage, round and the last good checkpoint."""
    env = {"FEDPFT_TEST_NONFINITE": "stage=alignment,process=1"}
    started = time.time()
    done = fedtune(tmp_path, pft_args(assets, "--num_rounds", "3"), processes=2, env=env, timeout=300)
    assert done.returncode != 0, done.stderr[-3000:]
    lines = errors(done.stderr)
    assert lines and len(set(lines)) == 1, done.stderr[-3000:]
    assert "non-finite loss (nan) in alignment, round 2" in lines[0] and "checkpoint-round1" in lines[0]
    assert time.time() - started < 280
    folder = run_folder(tmp_path)
    assert [r["round"] for r in metrics(folder)] == [0, 1]  # round 2 never logged; round 1's checkpoint kept
    assert (folder / "server" / "checkpoint-round1" / "server_state.pt").is_file()


@pytest.mark.parametrize(
    ("hook", "fragment"),
    [
        ("stage=client training,round=2,client=3", "non-finite loss (nan) in client training, round 2, client 3"),
        ("stage=alignment,round=2", "non-finite loss (nan) in alignment, round 2"),
    ],
)
def test_non_finite_losses_stop_the_run_with_one_line(assets, tmp_path, hook, fragment):
    line = one_error(fedtune(tmp_path, pft_args(assets, "--num_rounds", "3"), env={"FEDPFT_TEST_NONFINITE": hook}))
    assert fragment in line and "checkpoint-round1" in line, line


def test_a_second_run_on_a_folder_in_use_is_refused(assets, tmp_path):
    from federated_proxy_finetuning.fedtune import parse_settings
    from sub_model_construct.io import RunLock

    args = fed_args(assets, "--num_rounds", "1", "--eval_interval", "0")
    s = parse_settings(args, "text")
    folder = tmp_path / "fed-result" / "bbc" / s.model_name / s.run_name
    lock = RunLock(folder)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.path.parent.mkdir(parents=True)
        lock.path.write_text(f"{os.uname().nodename} {sleeper.pid}\n")
        line = one_error(fedtune(tmp_path, [*args, "--resume", "auto"]))
        assert "in use by another run" in line and str(sleeper.pid) in line
        assert not folder.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    done = fedtune(tmp_path, args)  # the owner is gone: the lock is stale and taken over
    assert done.returncode == 0, done.stderr
    assert not lock.path.exists()


def test_damaged_inputs_are_named_in_one_line(assets, tmp_path):
    bad = tmp_path / "fm"
    shutil.copytree(assets / "text-fm", bad)
    cases = {
        "model.safetensors": lambda: (bad / "model.safetensors").write_bytes(b"not weights"),
        "config.json": lambda: (bad / "config.json").write_text('{"model_type": "bert",'),
        "tokenizer": lambda: (bad / "tokenizer.json").write_text("{"),
    }
    for name, damage in cases.items():
        shutil.rmtree(bad)
        shutil.copytree(assets / "text-fm", bad)
        damage()
        cwd = tmp_path / f"cwd-{name}"
        cwd.mkdir()
        args = fed_args(assets, "--num_rounds", "1")
        args[args.index(str(assets / "text-fm"))] = str(bad)
        line = one_error(fedtune(cwd, args))
        assert str(bad) in line and "cannot be read" in line, line
        assert not (cwd / "fed-result").exists()


def test_damaged_results_refuse_a_resume_naming_the_file(assets, tmp_path):
    args = fed_args(assets, "--num_rounds", "3", "--stop_after_round", "2")
    assert fedtune(tmp_path, args).returncode == 0
    folder = run_folder(tmp_path)
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    damages = {
        "metrics.jsonl": lambda f: (f / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1, "fm": {\n'),
        "server_state.pt": lambda f: (f / "server" / "checkpoint-round2" / "server_state.pt").write_bytes(b"x"),
        "adapter_model.safetensors": lambda f: (
            f / "server" / "checkpoint-round2" / "adapter_model.safetensors"
        ).write_bytes(b"y"),
        "summary.json": lambda f: (f / "summary.json").write_text("{"),
    }
    for name, damage in damages.items():
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        damage(folder)
        before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
        line = one_error(fedtune(tmp_path, [*fed_args(assets, "--num_rounds", "3"), "--resume", "auto"]))
        assert name in line, line
        assert sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*")) == before, name


def test_a_damaged_tokenised_cache_is_rebuilt(assets, tmp_path):
    args = fed_args(assets, "--num_rounds", "1", "--eval_interval", "1")
    first = tmp_path / "first"
    first.mkdir()
    assert fedtune(first, args).returncode == 0
    (cache,) = (first / ".cache").glob("bbc-*")
    arrow = next(cache.rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-40] + b"\0" * 40)  # same size, altered content
    second = tmp_path / "second"
    shutil.copytree(first / ".cache", second / ".cache")
    shutil.copytree(first / "task", second / "task")
    done = fedtune(second, args)
    assert done.returncode == 0, done.stderr
    assert "damaged or incomplete: rebuilding" in done.stderr
    same_metrics(metrics(run_folder(second)), metrics(run_folder(first)))


def test_outputs_that_cannot_be_written_are_refused_before_training(assets, tmp_path):
    (tmp_path / "a-file").write_text("")
    for root, fragment in ((tmp_path / "a-file" / "results", "is not a directory"), (Path("/proc/no/results"), "")):
        line = one_error(fedtune(tmp_path, fed_args(assets, "--num_rounds", "1", "--output_root", str(root))))
        assert "run folder" in line and fragment in line, line
    cache = tmp_path / "a-file" / "cache"
    line = one_error(fedtune(tmp_path, fed_args(assets, "--num_rounds", "1", "--cache_dir", str(cache))))
    assert "(--cache_dir)" in line and "is not a directory" in line, line


def test_a_full_disk_is_found_before_anything_is_written(tmp_path, monkeypatch):
    from sub_model_construct import io

    io.check_writable(tmp_path / "run", "run folder", 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(UsageError, match="only 0.0 MB free"):
        io.check_writable(tmp_path / "run", "run folder", 1000)
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(UsageError, match="refuses new files"):
            io.check_writable(tmp_path / "ro" / "run", "run folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ro"] if os.geteuid() != 0 else [])


def test_number_ranges_refuse_nan_and_infinity():
    from sub_model_construct.typed_settings import POSITIVE, Range

    assert 1e300 in POSITIVE and math.nan not in POSITIVE and math.inf not in POSITIVE
    assert -math.inf not in Range() and 0.5 in Range(0, 1) and True not in Range()
    assert re.fullmatch(r"in \[0, 1\)", str(Range(0, 1, high_open=True)))
