"""End-to-end runs of sub_model_construct/distill.py and distill_vit.py on tiny FMs (spec §2.7, §3.5): folder
names, the JSON summary and log, refusing to overwrite, resuming, construction only, and bad input (one `error:`
line on stderr, a non-zero exit, nothing written).

Every command is a subprocess; they are independent except within a chain (run, refuse, resume), so all of them
are started together from one module fixture and the tests only read the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AlbertConfig, AutoModel, AutoModelForImageClassification, GPT2Config

import datasets
from sub_model_construct.sub_model import build_sub_model
from sub_model_construct.sub_model_io import load_sub_model
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "sub_model_construct" / "distill.py"
DISTILL_VIT = ROOT / "sub_model_construct" / "distill_vit.py"
ENV = tiny.subprocess_env()
SUB_NAME = "sub-{fm}-retained03-r1" + str(tiny.HIDDEN) + "-r216"  # spec §2.7
# spec §3.5: {sub}-distilled-{corpus}-lr{lr}-mgn{max_grad_norm}-epoch{E}-da{alpha}-bs{per_device x accumulation}-with-wl
DISTILLED_SUFFIX = "-distilled-{corpus}-lr0.0001-mgn1.0-epoch1.0-da{alpha}-bs8-with-wl"
SHAPE_ARGS = ["--layers_retained", "0", "3", "--intermediate_rank", "16"]
TRAIN_ARGS = [
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "2",
    "--max_steps",
    "6",
    "--eval_blocks",
    "8",
]
TEXT_CORPUS_ARGS = ["--dataset1_path", "corpus.txt", "--dataset2_path", "", "--block_size", "32"]


def run_script(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300
    )


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file below `folder`: equal digests mean nothing was rewritten."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


# ----------------------------------------------------------------------------------------------- assets
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    paths = {
        "bert": tiny.make_text_fm(root / "bert-tiny", "bert"),
        "roberta": tiny.make_text_fm(root / "roberta-tiny", "roberta"),
        "vit": tiny.make_vit_fm(root / "vit-tiny"),
        "corpus": tiny.write_text_corpus(root / "corpus.txt"),
        "images": tiny.write_image_corpus(root / "images"),
        "gpt2": root / "gpt2-tiny",
        "albert": root / "albert-tiny",
        "not_hf": root / "not-hf",
        "empty": root / "empty.txt",
        "jsonl_no_text": root / "no-text.jsonl",
        "hf_no_text": root / "hf-no-text",
        "malformed": root / "malformed.jsonl",
    }
    GPT2Config(n_layer=2, n_embd=32, n_head=4).save_pretrained(paths["gpt2"])
    AlbertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64).save_pretrained(
        paths["albert"]
    )
    paths["malformed"].write_text(json.dumps({"text": "the market"}) + "\n{not json\n")
    paths["not_hf"].mkdir()
    (paths["not_hf"] / "weights.bin").write_bytes(b"\0" * 16)
    paths["empty"].write_text("")
    paths["jsonl_no_text"].write_text("".join(json.dumps({"body": f"the market {i}"}) + "\n" for i in range(20)))
    datasets.Dataset.from_dict({"body": ["the market"] * 20, "label": [0] * 20}).save_to_disk(str(paths["hf_no_text"]))
    return paths


def text_args(assets, fm: str = "bert", *extra: str) -> list[str]:
    return [
        "--model_checkpoint",
        str(assets[fm]),
        *SHAPE_ARGS,
        "--distill",
        "True",
        *TEXT_CORPUS_ARGS,
        *TRAIN_ARGS,
        *extra,
    ]


def vit_args(assets, *extra: str) -> list[str]:
    return [
        "--model_checkpoint",
        str(assets["vit"]),
        *SHAPE_ARGS,
        "--distill",
        "True",
        "--distill_dataset_path",
        str(assets["images"]),
        *TRAIN_ARGS,
        *extra,
    ]


# ----------------------------------------------------------------------------------------------- scenarios
def distill_chain(script: Path, args: list[str], cwd: Path, distilled: str) -> dict:
    """Run with checkpoints every 2 steps, run again without --overwrite (refused), then resume from the latest
    checkpoint. Keeps what the first run wrote before the later runs change it."""
    first = run_script(script, args, cwd)
    out = cwd / "sub_model" / distilled
    chain = {"first": first, "out": out}
    if first.returncode != 0 or not (out / "distill_summary.json").is_file():
        return chain
    chain["first_summary"] = json.loads((out / "distill_summary.json").read_text())
    chain["first_log"] = (out / "distill_log.jsonl").read_text().splitlines()
    chain["first_weights"] = load_file(str(out / "model.safetensors"))
    chain["checkpoints"] = sorted(p.name for p in out.glob("checkpoint-*"))
    before = tree_digest(cwd / "sub_model")
    chain["refused"] = run_script(script, args, cwd)
    chain["unchanged"] = before == tree_digest(cwd / "sub_model")
    chain["resumed"] = run_script(script, [*args, "--resume_from_checkpoint", "True"], cwd)
    return chain


def text_chain(assets, cwd: Path) -> dict:
    shutil.copy(assets["corpus"], cwd / "corpus.txt")
    name = SUB_NAME.format(fm="bert-tiny")
    distilled = name + DISTILLED_SUFFIX.format(corpus="corpus.txt", alpha="1.0")
    return distill_chain(DISTILL, text_args(assets, "bert", "--save_steps", "2"), cwd, distilled)


def vit_chain(assets, cwd: Path) -> dict:
    name = SUB_NAME.format(fm="vit-tiny")
    distilled = name + DISTILLED_SUFFIX.format(corpus="images", alpha="0.0")
    args = vit_args(assets, "--save_steps", "2", "--save_total_limit", "1")  # checkpoint-2 removed once 4 is saved
    return distill_chain(DISTILL_VIT, args, cwd, distilled)


def roberta_run(assets, cwd: Path) -> dict:
    shutil.copy(assets["corpus"], cwd / "corpus.txt")
    args = text_args(assets, "roberta", "--save_steps", "1", "--keep_checkpoints", "False", "--distill_alpha", "0.01")
    return {"result": run_script(DISTILL, args, cwd), "cwd": cwd}


def construct_only(assets, cwd: Path) -> dict:
    # the default corpus paths do not exist here: construction alone must not need them
    args = ["--model_checkpoint", str(assets["bert"]), *SHAPE_ARGS, "--distill", "False"]
    return {"result": run_script(DISTILL, args, cwd), "cwd": cwd}


def _bad(assets, case: str) -> tuple[str, list[str]]:
    """(modality, arguments) that must be refused before anything is written."""
    corpus_args = [a if a != "corpus.txt" else str(assets["corpus"]) for a in TEXT_CORPUS_ARGS]
    ok_text = ["--distill", "True", *corpus_args, *TRAIN_ARGS]
    bert = ["--model_checkpoint", str(assets["bert"])]
    cases = {
        "missing_checkpoint": [
            "--model_checkpoint",
            str(assets["bert"].parent / "no-such-fm"),
            *SHAPE_ARGS,
            *ok_text,
        ],
        "not_a_transformers_folder": ["--model_checkpoint", str(assets["not_hf"]), *SHAPE_ARGS, *ok_text],
        "unsupported_gpt2": ["--model_checkpoint", str(assets["gpt2"]), "--intermediate_rank", "16", *ok_text],
        "unsupported_albert": ["--model_checkpoint", str(assets["albert"]), "--intermediate_rank", "16"],
        "rank_zero": [*bert, "--layers_retained", "0", "3", "--intermediate_rank", "0", *ok_text],
        "rank_too_big": [*bert, "--layers_retained", "0", "3", "--intermediate_rank", str(tiny.FFN + 1)],
        "layer_out_of_range": [*bert, "--layers_retained", "0", "4", "--intermediate_rank", "16", *ok_text],
        "layer_duplicated": [*bert, "--layers_retained", "0", "3", "3", "--intermediate_rank", "16"],
        "qk_rank": [*bert, *SHAPE_ARGS, "--qk_rank", "16", *ok_text],
        "missing_corpus": [
            *bert,
            *SHAPE_ARGS,
            "--distill",
            "True",
            "--dataset1_path",
            "nowhere.txt",
            "--dataset2_path",
            "",
            "--block_size",
            "32",
        ],
        "empty_corpus": [*bert, *SHAPE_ARGS, "--distill", "True", "--dataset1_path", str(assets["empty"])],
        "jsonl_without_text": [
            *bert,
            *SHAPE_ARGS,
            "--distill",
            "True",
            "--dataset1_path",
            str(assets["jsonl_no_text"]),
        ],
        "hf_without_text": [*bert, *SHAPE_ARGS, "--distill", "True", "--dataset1_path", str(assets["hf_no_text"])],
        "vit_missing_images": [
            "--model_checkpoint",
            str(assets["vit"]),
            *SHAPE_ARGS,
            "--distill",
            "True",
            "--distill_dataset_path",
            "no-images",
        ],
        "boolean_maybe": [*bert, *SHAPE_ARGS, "--distill", "maybe"],
        "all_layers_retained": [*bert, "--layers_retained", "0", "1", "2", "3", "--intermediate_rank", "16", *ok_text],
        "block_size_zero": [*bert, *SHAPE_ARGS, *ok_text, "--block_size", "0"],
        "malformed_jsonl": [*bert, *SHAPE_ARGS, "--distill", "True", "--dataset1_path", str(assets["malformed"])],
    }
    args = cases[case]
    if case in ("empty_corpus", "jsonl_without_text", "hf_without_text", "malformed_jsonl"):
        args = [*args, "--dataset2_path", "", "--block_size", "32", *TRAIN_ARGS]
    return ("image" if case.startswith("vit_") else "text"), args


BAD_CASES = [
    "missing_checkpoint",
    "not_a_transformers_folder",
    "unsupported_gpt2",
    "unsupported_albert",
    "rank_zero",
    "rank_too_big",
    "layer_out_of_range",
    "layer_duplicated",
    "qk_rank",
    "missing_corpus",
    "empty_corpus",
    "jsonl_without_text",
    "hf_without_text",
    "vit_missing_images",
    "boolean_maybe",
]


# Each CLI run pays ~4 s of imports, so only two bad inputs go through a real subprocess: the earliest failure (before
# any model code) and argparse's own. The refused second runs of both distillation chains are real subprocesses that
# fail at the latest point (after models and corpora are loaded), so library noise anywhere in between would show.
# Every case also runs in-process below, through the entry points' own run_cli(main).
SUBPROCESS_BAD_CASES = ["missing_checkpoint", "boolean_maybe"]


def bad_run(assets, case: str, cwd: Path) -> dict:
    modality, args = _bad(assets, case)
    return {"result": run_script(DISTILL_VIT if modality == "image" else DISTILL, args, cwd), "cwd": cwd}


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory) -> dict[str, dict]:
    jobs = {"text": text_chain, "vit": vit_chain, "roberta": roberta_run, "construct_only": construct_only}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(job, assets, tmp_path_factory.mktemp(name)) for name, job in jobs.items()}
        for case in SUBPROCESS_BAD_CASES:
            futures[case] = pool.submit(bad_run, assets, case, tmp_path_factory.mktemp(case))
        return {name: future.result() for name, future in futures.items()}


def run_in_process(modality: str, args: list[str], cwd: Path, monkeypatch) -> int:
    """The entry points' own `run_cli(lambda: main(argv, modality))`, in this process; returns the exit status."""
    from sub_model_construct.cli import run_cli
    from sub_model_construct.distill import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: main(args, modality))
    return exited.value.code


# ----------------------------------------------------------------------------------------------- text
def test_text_distillation_end_to_end(runs, assets):
    chain = runs["text"]
    first = chain["first"]
    assert first.returncode == 0, explain(first)
    sub_models = chain["out"].parent
    undistilled = sub_models / SUB_NAME.format(fm="bert-tiny")
    assert {p.name for p in sub_models.iterdir() if not p.name.startswith(".")} == {undistilled.name, chain["out"].name}
    assert (undistilled / "config.json").is_file() and (undistilled / "model.safetensors").is_file()

    summary = chain["first_summary"]
    assert summary["heldout_hidden_nmse_after"] < summary["heldout_hidden_nmse_before"]
    assert summary["compressed_layers"] == [1, 2] and summary["steps"] == 6 and summary["effective_batch_size"] == 8
    assert summary["heldout_items"] == 8
    assert summary["sub_fm_encoder_layer_parameters"] < summary["fm_encoder_layer_parameters"]
    log = [json.loads(line) for line in chain["first_log"]]
    assert log and [r["step"] for r in log] == sorted(r["step"] for r in log) and log[-1]["step"] == 6
    assert all({"loss", "learning_rate", "hidden_loss", "weight_loss"} <= set(r) for r in log)
    assert chain["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    # stderr is a pipe, not a terminal: progress comes as plain lines (one per tenth of the steps), no bar frames
    assert "\r" not in first.stderr
    progress = [line for line in first.stderr.splitlines() if line.startswith("distill: ")]
    assert [line.split()[1] for line in progress] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert all(", loss " in line and line.endswith(" s") for line in progress)

    for folder in (undistilled, chain["out"], chain["out"] / "checkpoint-4"):
        model = load_sub_model(folder)
        assert model.config.ffn_widths == [tiny.FFN, 16, 16, tiny.FFN] and model.config.layers_retained == [0, 3]
    # the undistilled folder holds exactly what build_sub_model makes of the FM
    built = build_sub_model(AutoModel.from_pretrained(assets["bert"]), [0, 3], 16).state_dict()
    saved = load_file(str(undistilled / "model.safetensors"))
    assert saved.keys() == built.keys() and all(torch.equal(saved[k], built[k]) for k in saved)
    # distillation changed the compressed FFNs only
    distilled = chain["first_weights"]
    changed = {k for k in saved if not torch.equal(saved[k], distilled[k])}
    assert changed and all(k.startswith(("encoder.layer.1.", "encoder.layer.2.")) for k in changed)
    assert not any("attention" in k for k in changed)


def test_second_run_without_overwrite_refuses_and_keeps_the_output(runs):
    chain = runs["text"]
    assert chain["first"].returncode == 0, explain(chain["first"])
    assert_refused_cleanly(chain["refused"], "exists")
    assert chain["unchanged"]


def test_resume_from_the_latest_checkpoint_finishes_with_the_same_weights(runs):
    chain = runs["text"]
    assert chain["first"].returncode == 0, explain(chain["first"])
    resumed = chain["resumed"]
    assert resumed.returncode == 0, explain(resumed)
    summary = json.loads((chain["out"] / "distill_summary.json").read_text())
    assert summary["args"]["resume_from_checkpoint"] == "True" and summary["steps"] == 6
    log = [json.loads(line) for line in (chain["out"] / "distill_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log[len(chain["first_log"]) :]] == [5, 6]  # only the steps after checkpoint-4
    weights = load_file(str(chain["out"] / "model.safetensors"))
    for key, value in chain["first_weights"].items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6, msg=key)
    assert summary["heldout_hidden_nmse_after"] == pytest.approx(chain["first_summary"]["heldout_hidden_nmse_after"])


def test_construct_only_writes_the_undistilled_sub_model(runs, assets):
    result, cwd = runs["construct_only"]["result"], runs["construct_only"]["cwd"]
    assert result.returncode == 0, explain(result)
    folder = cwd / "sub_model" / SUB_NAME.format(fm="bert-tiny")
    assert sorted(p.name for p in (cwd / "sub_model").iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "sub_model_info.json"]
    info = json.loads((folder / "sub_model_info.json").read_text())
    assert info["encoder_layer_parameters"] < info["fm_encoder_layer_parameters"]
    assert f"{info['encoder_layer_parameters']:,}" in result.stdout
    loaded = load_sub_model(folder).eval()
    built = build_sub_model(AutoModel.from_pretrained(assets["bert"]), [0, 3], 16).eval()
    ids = torch.randint(5, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, built(input_ids=ids).last_hidden_state)


def test_roberta_family_distils(runs):
    result, cwd = runs["roberta"]["result"], runs["roberta"]["cwd"]
    assert result.returncode == 0, explain(result)
    name = SUB_NAME.format(fm="roberta-tiny")
    out = cwd / "sub_model" / (name + DISTILLED_SUFFIX.format(corpus="corpus.txt", alpha="0.01"))
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["heldout_hidden_nmse_after"] < summary["heldout_hidden_nmse_before"]
    assert summary["steps"] > 1  # so checkpoints were written (every step) ...
    assert not list(out.glob("checkpoint-*"))  # ... and removed once the run finished (--keep_checkpoints False)
    model = load_sub_model(out)
    assert model.config.model_type == "roberta" and model.config.ffn_widths == [tiny.FFN, 16, 16, tiny.FFN]


# ----------------------------------------------------------------------------------------------- ViT
def test_vit_distillation_end_to_end(runs):
    chain = runs["vit"]
    first = chain["first"]
    assert first.returncode == 0, explain(first)
    assert (chain["out"].parent / SUB_NAME.format(fm="vit-tiny") / "model.safetensors").is_file()
    summary = chain["first_summary"]
    assert summary["heldout_hidden_nmse_after"] < summary["heldout_hidden_nmse_before"]
    assert summary["compressed_layers"] == [1, 2] and summary["heldout_items"] == 4  # 40 images // 10
    assert summary["steps"] == 5  # one epoch of 36 images at 8 per step, below --max_steps 6
    log = [json.loads(line) for line in chain["first_log"]]
    assert log[-1]["step"] == 5 and "weight_loss" not in log[-1]  # distill_alpha defaults to 0 for ViT
    assert chain["checkpoints"] == ["checkpoint-4"]  # --save_total_limit 1
    headed = load_sub_model(chain["out"], AutoModelForImageClassification, num_labels=3)
    assert headed.config.ffn_widths == [tiny.FFN, 16, 16, tiny.FFN]
    undistilled = load_file(str(chain["out"].parent / SUB_NAME.format(fm="vit-tiny") / "model.safetensors"))
    changed = {k for k, v in chain["first_weights"].items() if not torch.equal(v, undistilled[k])}
    assert changed and all(k.startswith(("layers.1.mlp.", "layers.2.mlp.")) for k in changed)


def test_vit_second_run_refuses_and_resume_works(runs):
    chain = runs["vit"]
    assert chain["first"].returncode == 0, explain(chain["first"])
    assert_refused_cleanly(chain["refused"], "exists")
    assert chain["unchanged"]
    assert chain["resumed"].returncode == 0, explain(chain["resumed"])
    log = (chain["out"] / "distill_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log[len(chain["first_log"]) :]] == [5]


def test_vit_runs_with_the_same_seed_are_identical(assets, tmp_path, monkeypatch):
    weights = []
    for attempt in ("one", "two"):
        (tmp_path / attempt).mkdir()
        assert run_in_process("image", vit_args(assets, "--save_steps", "0"), tmp_path / attempt, monkeypatch) == 0
        (out,) = (tmp_path / attempt / "sub_model").glob("*-distilled-*")
        weights.append(load_file(str(out / "model.safetensors")))
    for key, value in weights[0].items():
        assert torch.equal(weights[1][key], value), key


def test_vit_resume_finishes_with_the_same_weights(runs):
    chain = runs["vit"]
    assert chain["resumed"].returncode == 0, explain(chain["resumed"])
    weights = load_file(str(chain["out"] / "model.safetensors"))
    for key, value in chain["first_weights"].items():
        assert torch.equal(weights[key], value), key


# ----------------------------------------------------------------------------------------------- bad input
def assert_refused_cleanly(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0, explain(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), explain(result)
    assert fragment in lines[0], explain(result)


BAD_FRAGMENTS = {
    "missing_checkpoint": "not found",
    "not_a_transformers_folder": "no config.json",
    "unsupported_gpt2": "gpt2",
    "unsupported_albert": "albert",
    "rank_zero": "--intermediate_rank",
    "rank_too_big": "--intermediate_rank",
    "layer_out_of_range": "out of range",
    "layer_duplicated": "duplicated",
    "qk_rank": "--qk_rank",
    "missing_corpus": "not found",
    "empty_corpus": "empty",
    "jsonl_without_text": "text",
    "hf_without_text": "no text column",
    "vit_missing_images": "not found",
    "all_layers_retained": "compressed",
    "block_size_zero": "--block_size",
    "malformed_jsonl": "malformed.jsonl",
}


IN_PROCESS_CASES = [
    *(c for c in BAD_CASES if c != "boolean_maybe"),
    pytest.param(
        "all_layers_retained",
    ),
    pytest.param(
        "block_size_zero",
    ),
    pytest.param(
        "malformed_jsonl",
    ),
]


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(assets, case, tmp_path, monkeypatch, capfd):
    modality, args = _bad(assets, case)
    code = run_in_process(modality, args, tmp_path, monkeypatch)
    _, err = capfd.readouterr()
    assert_refused_cleanly(subprocess.CompletedProcess(args, code, "", err), BAD_FRAGMENTS[case])
    if case.startswith("unsupported"):
        assert all(name in err for name in ("bert", "roberta", "vit"))
    assert list(tmp_path.iterdir()) == [], f"{case} wrote {list(tmp_path.rglob('*'))}"


@pytest.mark.parametrize("case", [c for c in SUBPROCESS_BAD_CASES if c != "boolean_maybe"])
def test_bad_input_from_the_command_line(runs, case):
    result, cwd = runs[case]["result"], runs[case]["cwd"]
    assert_refused_cleanly(result, BAD_FRAGMENTS[case])
    assert list(cwd.iterdir()) == [], f"{case} wrote {list(cwd.rglob('*'))}"


def test_boolean_flag_rejects_maybe_with_one_error_line(runs):
    result, cwd = runs["boolean_maybe"]["result"], runs["boolean_maybe"]["cwd"]
    assert result.returncode == 2, explain(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), explain(result)
    assert "--distill" in lines[0] and "maybe" in lines[0]
    assert list(cwd.iterdir()) == []
