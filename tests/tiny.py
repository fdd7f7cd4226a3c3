"""Tiny FMs, tokenizers and corpora built from configs in a temp folder: no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    MPNetConfig,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

WORDS = (
    "the a an of to in and is was for on with as by at from that this it be are were has have had not but or "
    "market shares bank profit growth film music award star band game team match win player goal cup election "
    "party minister vote government phone software computer internet users data chip mobile network"
).split()
HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 4


def write_vocab(folder: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += list("abcdefghijklmnopqrstuvwxyz.,")
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def make_text_fm(folder: Path, family: str = "bert", layers: int = LAYERS, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast(vocab=str(write_vocab(folder)), do_lower_case=True)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=136,
    )
    if family == "bert":
        model = BertModel(BertConfig(**common))
    else:
        model = RobertaModel(RobertaConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mpnet_config(layers: int = LAYERS, vocab_size: int = 64, **overrides) -> MPNetConfig:
    """A tiny MPNet (hidden 32, FFN 64): RoBERTa-style ids (pad 1, bos 0, eos 2) and 32 relative-position buckets,
    the only bucket count MPNet's encoder computes with."""
    return MPNetConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=40,
        **overrides,
    )


def make_vit_fm(folder: Path, layers: int = LAYERS, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    return folder


def make_fm(folder: Path, family: str) -> Path:
    return make_vit_fm(folder) if family == "vit" else make_text_fm(folder, family)


def write_text_corpus(path: Path, lines: int = 200, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(lines):
        n = int(torch.randint(5, 20, (1,), generator=gen))
        rows.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=gen)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    else:
        path.write_text("\n".join(rows) + "\n")
    return path


def write_image_corpus(folder: Path, count: int = 40, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    import datasets

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L") for _ in range(count)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]})
    ds = ds.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(folder))
    return folder


def align_flags(corpus: Path) -> list[str]:
    """The alignment flags of the tiny CLI runs: the public text corpus and a short, small-batch alignment."""
    return [
        *("--distill_dataset1_path", str(corpus), "--distill_dataset2_path", "", "--align_block_size", "16"),
        *("--align_batch_size", "4", "--align_epochs", "0.5"),
        *("--align_grad_accum_start", "2", "--align_grad_accum_min", "1"),
    ]


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: offline, one thread (the test process and its children share the cores),
    and this checkout first on the path: a script's own folder comes first on its path, so without it
    `federated_proxy_finetuning.*` would resolve to whichever checkout is installed, not the one under test."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def write_finished_run(argv: list[str], modality: str = "text"):
    """A finished run folder for these fedtune flags, where fedtune would write it and with the config.json args it
    would record (no training); returns (settings, folder)."""
    from federated_proxy_finetuning.fedtune import parse_settings
    from sub_model_construct.typed_settings import as_flags

    settings = parse_settings(argv, modality)
    folder = settings.run_path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"args": as_flags(settings)}))
    (folder / "summary.json").write_text(json.dumps({"finished": True}))
    return settings, folder


def ffn_pair(layer, family):
    """(W_in, W_out) Linear modules of a one-input FFN (families.py rows of BERT, RoBERTa, MPNet, ViT)."""
    return family.ffn.input_linears(layer)[0], family.ffn.output_linear(layer)
