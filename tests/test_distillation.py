"""Layer-level KD loss, trainable set, the shared training loop and the corpora (spec §3)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from sub_model_construct import corpus
from sub_model_construct.distill_model import LayerKD, distillation_parameters, prepare_for_distillation
from sub_model_construct.families import family_of
from sub_model_construct.sub_model import build_sub_model, compressed_layers
from sub_model_construct.train_loop import NonFiniteLossError, OptimConfig, batch_plan, steps_for, train
from tests import tiny


def text_batch(n: int = 4, length: int = 10) -> dict:
    ids = torch.randint(5, 60, (n, length), generator=torch.Generator().manual_seed(n))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def vit_batch(n: int = 4) -> dict:
    return {"pixel_values": torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))}


@pytest.fixture(params=["bert", "roberta", "vit"])
def pair(request, tmp_path):
    fm = AutoModel.from_pretrained(tiny.make_fm(tmp_path / request.param, request.param)).eval()
    return request.param, fm, build_sub_model(fm, [0, 3], 16)


def kd_for(fm, sub, alpha=0.0, grad=True):
    layers = compressed_layers(sub.config)
    return LayerKD(fm, sub, [(i, i) for i in layers], alpha, grad)


def test_kd_loss_is_zero_for_the_same_model_and_positive_after_compression(pair):
    name, fm, sub = pair
    batch = vit_batch() if name == "vit" else text_batch()
    same = build_sub_model(fm, [], tiny.FFN).eval()
    loss, _ = LayerKD(fm, same, [(1, 1), (2, 2)], alpha=1.0)(batch)
    assert loss.item() == 0.0
    sub.eval()
    loss, parts = kd_for(fm, sub, alpha=1.0)(batch)
    assert loss.item() > 0 and parts["hidden_loss"] > 0 and parts["weight_loss"] > 0


def test_weight_term_gradient_flag(pair):
    name, fm, sub = pair
    batch = vit_batch() if name == "vit" else text_batch()
    sub.eval()

    def grads(alpha, grad):
        model = copy.deepcopy(sub)
        named = distillation_parameters(model, compressed_layers(model.config))
        prepare_for_distillation(fm, model, [p for _, p in named])
        loss, _ = kd_for(fm, model, alpha, grad)(batch)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for _, p in named])

    base = grads(0.0, True)
    assert torch.allclose(grads(1.0, False), base)  # reference: the weight term only changes the logged value
    assert not torch.allclose(grads(1.0, True), base)


def test_trainable_set_is_the_compressed_ffns(pair):
    name, _, sub = pair
    names = {n for n, _ in distillation_parameters(sub, compressed_layers(sub.config))}
    family = family_of(sub.config)
    parts = [family.ffn_in, family.ffn_out] + ([family.ffn_out_norm] if family.ffn_out_norm else [])
    expected = {f"{family.layers}.{i}.{part}.{w}" for i in (1, 2) for part in parts for w in ("weight", "bias")}
    assert names == expected


def test_training_moves_only_the_trainable_set_and_lowers_the_loss(pair):
    name, fm, sub = pair
    data = [vit_batch(1) if name == "vit" else text_batch(1) for _ in range(8)]
    data = [{k: v[0] for k, v in row.items()} for row in data]

    def collate(rows):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    before = copy.deepcopy(sub)
    named = distillation_parameters(sub, compressed_layers(sub.config))
    prepare_for_distillation(fm, sub, [p for _, p in named])
    kd = kd_for(fm, sub)
    first, _ = kd(collate(data))
    train(
        named,
        data,
        collate,
        kd,
        optim=OptimConfig(learning_rate=5e-3),
        total_steps=10,
        micro_batch_size=4,
        effective_batch_size=8,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )
    last, _ = kd(collate(data))
    assert last.item() < first.item()
    trained = {n for n, _ in named}
    for (n, p), (_, q) in zip(sub.named_parameters(), before.named_parameters()):
        assert torch.equal(p, q) == (n not in trained), n


def test_steps_and_batch_plan():
    assert steps_for(100, 16, 1.0) == 7
    assert steps_for(100, 16, 0.02) == 1 and steps_for(100, 16, 0.5) == 4 and steps_for(100, 16, 1e-4) == 1
    full = list(zip(range(10), batch_plan(10, 4, seed=3)))
    resumed = list(zip(range(7), batch_plan(10, 4, seed=3, start_step=3)))
    assert [b for _, b in full[3:]] == [b for _, b in resumed]
    assert sorted(i for _, b in full[:3] for i in b) == list(range(10))  # one epoch covers everything once


def test_micro_batch_size_does_not_change_the_update(tmp_path):
    fm = AutoModel.from_pretrained(tiny.make_fm(tmp_path / "b", "bert")).eval()
    data = [
        {k: v[0] for k, v in text_batch(1, 6).items()} for _ in range(8)
    ]  # equal lengths: padding is part of the loss

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.stack([torch.nn.functional.pad(r["input_ids"], (0, width - len(r["input_ids"]))) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    results = []
    for micro in (2, 4):
        sub = build_sub_model(fm, [0, 3], 16)
        named = distillation_parameters(sub, compressed_layers(sub.config))
        prepare_for_distillation(fm, sub, [p for _, p in named])
        train(
            named,
            data,
            collate,
            kd_for(fm, sub),
            optim=OptimConfig(learning_rate=1e-3),
            total_steps=3,
            micro_batch_size=micro,
            effective_batch_size=4,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
        results.append(torch.cat([p.detach().reshape(-1) for _, p in named]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_nan_loss_stops_before_touching_weights():
    param = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train(
            [("w", param)],
            [0, 1],
            lambda rows: {},
            lambda b: (param.sum() * float("nan"), {}),
            optim=OptimConfig(learning_rate=1.0),
            total_steps=2,
            micro_batch_size=2,
            effective_batch_size=2,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
    assert torch.equal(param.detach(), torch.ones(3))


def test_text_corpus_sources_and_blocks(tmp_path):
    import datasets

    tiny.write_text_corpus(tmp_path / "a.txt", lines=30)
    tiny.write_text_corpus(tmp_path / "b.jsonl", lines=20, seed=1)
    (tmp_path / "folder").mkdir()
    tiny.write_text_corpus(tmp_path / "folder" / "c.txt", lines=10, seed=2)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["the market"] * 5})}).save_to_disk(
        str(tmp_path / "hf")
    )
    assert len(corpus.load_text_corpus(str(tmp_path / "a.txt"))) == 30
    assert len(corpus.load_text_corpus(str(tmp_path / "b.jsonl"))) == 20
    assert len(corpus.load_text_corpus(str(tmp_path / "folder"))) == 10
    assert len(corpus.load_text_corpus(str(tmp_path / "hf"))) == 5
    both = corpus.load_text_corpora([str(tmp_path / "a.txt"), None, str(tmp_path / "b.jsonl")])
    assert len(both) == 50
    tokenizer = AutoTokenizer.from_pretrained(tiny.make_fm(tmp_path / "fm", "bert"))
    blocks = corpus.text_blocks(both, tokenizer, block_size=16, cache_dir=str(tmp_path / "cache"))
    assert len(blocks) > 0 and all(len(ids) == 16 for ids in blocks["input_ids"])
    cached = corpus.text_blocks(both, tokenizer, block_size=16, cache_dir=str(tmp_path / "cache"))
    assert cached["input_ids"] == blocks["input_ids"]
    short = corpus.text_blocks(datasets.Dataset.from_dict({"text": ["the market"]}), tokenizer, block_size=64)
    assert len(short) == 1 and len(short[0]["input_ids"]) < 64  # spec §3.1: a short batch is one short block


def test_bad_corpora(tmp_path):
    import datasets

    with pytest.raises(corpus.CorpusError, match="not found"):
        corpus.load_text_corpus(str(tmp_path / "missing"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(corpus.CorpusError, match="empty"):
        corpus.load_text_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "notext.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(corpus.CorpusError, match="text"):
        corpus.load_text_corpus(str(tmp_path / "notext.jsonl"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["x"]})}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(corpus.CorpusError, match="no text column"):
        corpus.load_text_corpus(str(tmp_path / "hf"))


def test_image_corpus(tmp_path):
    tiny.write_image_corpus(tmp_path / "imgs", count=6)
    transform = corpus.image_transform(8, [0.5], [0.5], 1, train=True)
    images = corpus.load_image_corpus(str(tmp_path / "imgs"), transform)
    assert len(images) == 6
    assert corpus.image_collate([images[0], images[1]])["pixel_values"].shape == (2, 1, 8, 8)
