"""distill.py / distill_vit.py end to end on tiny FMs, and every refused input (issue: bad input gives one line on
stderr, a non-zero exit and writes nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sub_model_construct.sub_model import load_sub_model
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
DISTILL = str(ROOT / "sub_model_construct" / "distill.py")
DISTILL_VIT = str(ROOT / "sub_model_construct" / "distill_vit.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TEXT = [
    "--layers_retained",
    "0",
    "3",
    "--intermediate_rank",
    "16",
    "--block_size",
    "32",
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "2",
    "--eval_blocks",
    "8",
    "--learning_rate",
    "1e-3",
]


def run(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    tiny.make_text_fm(root / "fm-bert", "bert")
    tiny.make_text_fm(root / "fm-roberta", "roberta")
    tiny.make_vit_fm(root / "fm-vit")
    tiny.write_text_corpus(root / "corpus.txt", lines=150)
    tiny.write_image_corpus(root / "images", count=48)
    return root


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_text_distillation_end_to_end(workdir, tmp_path, family):
    fm = str(workdir / f"fm-{family}")
    args = [
        "--model_checkpoint",
        fm,
        *TEXT,
        "--distill",
        "True",
        "--dataset1_path",
        str(workdir / "corpus.txt"),
        "--dataset2_path",
        "",
        "--max_steps",
        "6",
        "--save_steps",
        "2",
    ]
    done = run(DISTILL, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert "FM encoder-layer parameters" in done.stdout and "held-out normalised hidden MSE" in done.stdout
    plain = tmp_path / "sub_model" / f"sub-fm-{family}-retained03-r1{tiny.HIDDEN}-r216"
    assert (plain / "model.safetensors").exists()
    out = next((tmp_path / "sub_model").glob(f"sub-fm-{family}-retained03-r1{tiny.HIDDEN}-r216-distilled-corpus.txt-*"))
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["heldout_hidden_nmse_after"] < summary["heldout_hidden_nmse_before"]
    assert summary["steps"] == 6 and summary["sub_fm_encoder_layer_parameters"] < summary["fm_encoder_layer_parameters"]
    log = [json.loads(x) for x in (out / "distill_log.jsonl").read_text().splitlines()]
    assert log and all({"step", "loss", "learning_rate"} <= set(r) for r in log)
    assert load_sub_model(out).config.ffn_widths == [tiny.FFN, 16, 16, tiny.FFN]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    again = run(DISTILL, tmp_path, *args)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    resumed = run(DISTILL, tmp_path, *args, "--resume_from_checkpoint", "True")
    assert resumed.returncode == 0, resumed.stderr


def test_construction_only_and_reuse(workdir, tmp_path):
    args = ["--model_checkpoint", str(workdir / "fm-bert"), *TEXT]
    first = run(DISTILL, tmp_path, *args)
    assert first.returncode == 0, first.stderr
    folders = list((tmp_path / "sub_model").iterdir())
    assert [f.name for f in folders] == [f"sub-fm-bert-retained03-r1{tiny.HIDDEN}-r216"]
    assert run(DISTILL, tmp_path, *args).returncode == 0  # the undistilled folder is reused, as the reference does


def test_vit_distillation_end_to_end(workdir, tmp_path):
    done = run(
        DISTILL_VIT,
        tmp_path,
        "--model_checkpoint",
        str(workdir / "fm-vit"),
        "--layers_retained",
        "0",
        "--intermediate_rank",
        "16",
        "--distill",
        "True",
        "--distill_dataset_path",
        str(workdir / "images"),
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
        "--max_steps",
        "4",
        "--eval_blocks",
        "4",
        "--learning_rate",
        "1e-3",
    )
    assert done.returncode == 0, done.stderr
    out = next((tmp_path / "sub_model").glob("*-distilled-images-*"))
    sub = load_sub_model(out)
    assert sub.config.ffn_widths == [tiny.FFN, 16, 16, 16]
    assert sub(pixel_values=torch.randn(1, 1, 8, 8)).last_hidden_state.shape == (1, 5, tiny.HIDDEN)


def refusal(workdir: Path, cwd: Path, script: str, *args: str) -> str:
    done = run(script, cwd, *args)
    assert done.returncode != 0
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) >= 1 and ("error:" in lines[-1]), done.stderr
    if not lines[0].startswith("usage:"):  # argparse's own errors print the usage line first
        assert len(lines) == 1, done.stderr
    assert not (cwd / "sub_model").exists(), "a refused run must write nothing"
    return lines[-1]


def test_bad_input(workdir, tmp_path):
    fm = str(workdir / "fm-bert")
    corpus = str(workdir / "corpus.txt")
    distil = ["--distill", "True", "--dataset1_path", corpus, "--dataset2_path", ""]
    (tmp_path / "not-hf").mkdir()
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "notext.jsonl").write_text(json.dumps({"body": "the market"}) + "\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert "not found" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", str(tmp_path / "nothing"))
    assert "config.json" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", str(tmp_path / "not-hf"))
    assert "supported families" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", str(tmp_path / "gpt2"))
    assert "intermediate_rank" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", fm, "--intermediate_rank", "0")
    assert "intermediate_rank" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", fm, "--intermediate_rank", "999")
    assert "out of range" in refusal(
        workdir, cwd, DISTILL, "--model_checkpoint", fm, "--intermediate_rank", "16", "--layers_retained", "7"
    )
    assert "duplicated" in refusal(
        workdir, cwd, DISTILL, "--model_checkpoint", fm, "--intermediate_rank", "16", "--layers_retained", "1", "1"
    )
    assert "attention compression" in refusal(
        workdir, cwd, DISTILL, "--model_checkpoint", fm, "--intermediate_rank", "16", "--qk_rank", "256"
    )
    base = ["--model_checkpoint", fm, "--intermediate_rank", "16", "--distill", "True", "--dataset2_path", ""]
    assert "not found" in refusal(workdir, cwd, DISTILL, *base, "--dataset1_path", str(tmp_path / "none.txt"))
    assert "empty" in refusal(workdir, cwd, DISTILL, *base, "--dataset1_path", str(tmp_path / "empty.txt"))
    assert "text" in refusal(workdir, cwd, DISTILL, *base, "--dataset1_path", str(tmp_path / "notext.jsonl"))
    assert "--distill" in refusal(workdir, cwd, DISTILL, "--model_checkpoint", fm, "--distill", "maybe")
    assert "distill_vit.py" in refusal(
        workdir, cwd, DISTILL, "--model_checkpoint", str(workdir / "fm-vit"), "--intermediate_rank", "16"
    )
    # an existing distilled output is refused (and left as it was) unless --overwrite
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run(DISTILL, cwd, *distil, "--model_checkpoint", fm, "--intermediate_rank", "16", "--output_dir", str(out))
    assert done.returncode != 0 and "--overwrite" in done.stderr.splitlines()[-1]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not (cwd / "sub_model").exists()
