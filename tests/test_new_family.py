"""A family added as one table row (sub_model_construct/families.py): DistilBERT, whose config names the FFN width
`hidden_dim` (not `intermediate_size`) and whose classification head spans two modules (`pre_classifier`,
`classifier`). From a tiny config: the sub-FM is cut by the FFN object with widths read from the modules, and a
2-round FedPFT with an alignment runs through fedtune.py, training and shipping both head modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory) -> Path:
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    import datasets
    from sub_model_construct.sub_model import build_sub_model
    from sub_model_construct.sub_model_io import save_sub_model

    root = tmp_path_factory.mktemp("distilbert")
    fm_dir = root / "fm"
    fm_dir.mkdir()
    # DistilBERT's tokenizer gives no token_type_ids (its model takes none)
    tokenizer = BertTokenizerFast(
        vocab=str(tiny.write_vocab(fm_dir)), model_input_names=["input_ids", "attention_mask"]
    )
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=tiny.HIDDEN,
        n_layers=tiny.LAYERS,
        n_heads=tiny.HEADS,
        hidden_dim=tiny.FFN,
        max_position_embeddings=136,
    )
    assert not hasattr(config, "intermediate_size")
    DistilBertModel(config).save_pretrained(fm_dir)
    tokenizer.save_pretrained(fm_dir)
    save_sub_model(build_sub_model(DistilBertModel.from_pretrained(fm_dir), [0, 3], 16), root / "sub")
    gen = torch.Generator().manual_seed(0)
    topics = [tiny.WORDS[25:31], tiny.WORDS[31:37], tiny.WORDS[43:49]]

    def rows(n):
        labels = [i % 3 for i in range(n)]
        texts = [" ".join(topics[y][int(j)] for j in torch.randint(0, 6, (6,), generator=gen)) for y in labels]
        return {"text": texts, "label": labels}

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["business", "sport", "tech"])}
    )
    splits = {"train": rows(64), "validation": rows(24)}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in splits.items()}).save_to_disk(
        str(root / "data" / "bbc")
    )
    tiny.write_text_corpus(root / "corpus.txt", lines=80)
    return root


def test_the_row_cuts_the_ffn_by_its_modules(distilbert):
    from sub_model_construct.families import FAMILIES, encoder_layers
    from sub_model_construct.sub_model import fm_ffn_width
    from sub_model_construct.sub_model_io import load_sub_model

    family = FAMILIES["distilbert"]
    sub = load_sub_model(distilbert / "sub")
    assert [family.ffn.width(layer) for layer in encoder_layers(sub, family)] == [tiny.FFN, 16, 16, tiny.FFN]
    assert fm_ffn_width(sub.config) == tiny.FFN  # from a meta-device model of the config, not a config attribute


def test_a_two_round_fedpft_trains_and_ships_both_head_modules(distilbert, tmp_path):
    args = [
        "--model_checkpoint", str(distilbert / "fm"), "--sub_model_checkpoint", str(distilbert / "sub"),
        "--method", "pft", "--task_name", "bbc", "--dataset_path", str(distilbert / "data"), "--num_clients", "4",
        "--proportion", "0.5", "--num_rounds", "2", "--align_interval", "1", "--learning_rate", "5e-3",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--lora_rank", "4",
        "--per_device_eval_batch_size", "8", *tiny.align_flags(distilbert / "corpus.txt"),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "federated_proxy_finetuning" / "fedtune.py"), *args],
        capture_output=True, text=True, cwd=tmp_path, env=tiny.subprocess_env(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(p for p in (tmp_path / "fed-result" / "bbc").glob("*/pft-*") if (p / "summary.json").exists())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2] and records[1]["aligned"]
    assert all(sum(map(sum, r["fm"]["eval_confusion"])) == 24 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["aligning"]
    from safetensors.torch import load_file

    adapter = load_file(str(run / "server" / "checkpoint-round2" / "adapter_model.safetensors"))
    heads = {key.split(".")[2] for key in adapter if "lora_" not in key}
    assert {"pre_classifier", "classifier"} <= heads
    assert records[2]["bytes_sent"] > records[1]["bytes_sent"]  # round 2 also ships round 1's FFN changes
