"""The real loading code on the embedded assets (MiniLM + BBC), when scripts/fetch_assets.sh has installed them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
FM = ROOT / "pretrain_models" / "all-MiniLM-L6-v2"
BBC = ROOT / "datasets" / "bbc"
CORPUS = ROOT / "datasets" / "bbc-corpus"
pytestmark = pytest.mark.skipif(
    not (FM / "model.safetensors").exists() or not (BBC / "dataset_dict.json").exists(),
    reason="embedded assets not fetched (bash scripts/fetch_assets.sh)",
)
ENV = tiny.subprocess_env()


def run(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def test_minilm_sub_fm_and_a_short_federated_run(tmp_path):
    built = run(
        "sub_model_construct/distill.py",
        tmp_path,
        "--model_checkpoint",
        str(FM),
        "--layers_retained",
        "0",
        "5",
        "--qk_rank",
        "384",
        "--intermediate_rank",
        "384",
        "--distill",
        "True",
        "--dataset1_path",
        str(CORPUS),
        "--dataset2_path",
        "",
        "--block_size",
        "64",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
        "--eval_blocks",
        "16",
        "--output_dir",
        str(tmp_path / "distilled"),
    )
    assert built.returncode == 0, built.stderr
    # MiniLM: 6 layers of 1,774,464 parameters; 4 of them with FFN 1536 -> 384
    assert "FM encoder-layer parameters: 10,646,784" in built.stdout and "sub-FM: 7,103,232" in built.stdout
    summary = json.loads((tmp_path / "distilled" / "distill_summary.json").read_text())
    assert summary["heldout_hidden_nmse_after"] < summary["heldout_hidden_nmse_before"]
    fed = run(
        "federated_proxy_finetuning/fedtune.py",
        tmp_path,
        "--model_checkpoint",
        str(FM),
        "--task_name",
        "bbc",
        "--dataset_path",
        str(BBC.parent),
        "--method",
        "pft",
        "--sub_model_checkpoint",
        str(tmp_path / "distilled"),
        "--num_clients",
        "10",
        "--proportion",
        "0.2",
        "--num_rounds",
        "2",
        "--align_interval",
        "1",
        "--align_epochs",
        "1e-4",
        "--align_block_size",
        "64",
        "--distill_dataset1_path",
        str(CORPUS),
        "--distill_dataset2_path",
        "",
        "--per_device_train_batch_size",
        "16",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "1e-3",
        "--max_length",
        "32",
        "--max_eval_samples",
        "64",
    )
    assert fed.returncode == 0, fed.stderr
    run_dir = next((tmp_path / "fed-result" / "bbc" / "distilled").iterdir())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2] and records[1]["aligned"]
    # two rounds of LoRA + head training lift the FM above its random head (5 topics: about 0.2 at round 0)
    assert records[-1]["fm"]["eval_accuracy"] > records[0]["fm"]["eval_accuracy"] + 0.1
