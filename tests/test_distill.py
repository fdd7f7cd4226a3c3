"""Layer-level distillation pieces (spec §3): the LayerKD loss and its trainable set, the shared training loop and the
public corpora."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import datasets
from sub_model_construct import corpus
from sub_model_construct.distill_model import (
    LayerKD,
    distillation_parameters,
    layer_outputs,
    prepare_for_distillation,
)
from sub_model_construct.families import encoder_layers, family_of
from sub_model_construct.sub_model import build_sub_model, compressed_layers
from sub_model_construct.train_loop import NonFiniteLossError, OptimConfig, batch_plan, steps_for, train
from tests import tiny

FAMILY_NAMES = ["bert", "roberta", "vit"]
RETAINED, RANK, COMPRESSED = [0, 3], 16, [1, 2]


@pytest.fixture(scope="module")
def fm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fms")
    return {name: tiny.make_fm(root / name, name) for name in FAMILY_NAMES}


def teacher_and_student(fm_dirs, name: str, retained=RETAINED, rank=RANK):
    fm = AutoModel.from_pretrained(fm_dirs[name])
    sub = build_sub_model(fm, retained, rank)
    return fm, sub


def examples(name: str, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Unbatched items for the training loop (fixed-length token rows or single images)."""
    gen = torch.Generator().manual_seed(seed)
    if name == "vit":
        return [{"pixel_values": torch.randn(1, 8, 8, generator=gen)} for _ in range(count)]
    return [{"input_ids": torch.randint(5, 60, (12,), generator=gen)} for _ in range(count)]


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    if "input_ids" in batch:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch


def kd_setup(fm, sub, alpha: float = 0.0, weight_term_grad: bool = True):
    layers = compressed_layers(sub.config)
    named = distillation_parameters(sub, layers)
    prepare_for_distillation(fm, sub, [p for _, p in named])
    return LayerKD(fm, sub, [(i, i) for i in layers], alpha, weight_term_grad), named


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def optim(lr: float = 1e-2, max_grad_norm: float = 1.0) -> OptimConfig:
    return OptimConfig(learning_rate=lr, max_grad_norm=max_grad_norm)


# ----------------------------------------------------------------------------------------------- LayerKD (§3.3)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_kd_loss_is_zero_for_an_identical_student_and_positive_after_compression(fm_dirs, name):
    batch = collate(examples(name, 3))
    fm, same = teacher_and_student(fm_dirs, name, retained=[], rank=tiny.FFN)
    kd, _ = kd_setup(fm, same, alpha=1.0)
    loss, parts = kd(batch)
    assert loss.item() == 0.0 and parts == {"hidden_loss": 0.0, "weight_loss": 0.0}

    fm, sub = teacher_and_student(fm_dirs, name)
    kd, _ = kd_setup(fm, sub, alpha=1.0)
    loss, parts = kd(batch)
    assert parts["hidden_loss"] > 0 and parts["weight_loss"] > 0
    assert loss.item() == pytest.approx(parts["hidden_loss"] + parts["weight_loss"], rel=1e-5)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layer_outputs_are_the_hidden_states_and_stop_after_the_deepest_layer(fm_dirs, name):
    fm, _ = teacher_and_student(fm_dirs, name)
    batch = {k: v for k, v in collate(examples(name, 3)).items() if k != "labels"}
    with torch.no_grad():
        hidden = fm(**batch, output_hidden_states=True).hidden_states
    ran = []
    layers = encoder_layers(fm, family_of(fm.config))
    hooks = [len(layer._forward_hooks) for layer in layers]
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda module, args, i=i: ran.append(i))
    with torch.no_grad():
        got = layer_outputs(fm, batch, [2, 1])
    assert sorted(got) == [1, 2] and ran == [0, 1, 2]  # layer 3 is never computed
    for i in (1, 2):
        assert torch.equal(got[i], hidden[i + 1])
    assert [len(layer._forward_hooks) for layer in layers] == hooks  # its capture hooks are gone
    ran.clear()
    with torch.no_grad():
        last = layer_outputs(fm, batch, [tiny.LAYERS - 1])
    assert ran == list(range(tiny.LAYERS)) and torch.equal(last[tiny.LAYERS - 1], hidden[tiny.LAYERS])


def _grads(fm_dirs, name, alpha, weight_term_grad):
    fm, sub = teacher_and_student(fm_dirs, name)
    kd, named = kd_setup(fm, sub, alpha, weight_term_grad)
    loss, _ = kd(collate(examples(name, 3)))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in named}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_detached_weight_term_changes_the_value_but_not_the_gradient(fm_dirs, name):
    plain_loss, plain = _grads(fm_dirs, name, alpha=0.0, weight_term_grad=True)
    logged_loss, logged = _grads(fm_dirs, name, alpha=1.0, weight_term_grad=False)
    live_loss, live = _grads(fm_dirs, name, alpha=1.0, weight_term_grad=True)
    assert logged_loss > plain_loss and live_loss == pytest.approx(logged_loss)
    for key in plain:
        assert torch.equal(logged[key], plain[key]), key  # spec §6.1: the reference's term gives no gradient
    ffn_weights = [k for k in plain if k.endswith(("dense.weight", "fc1.weight", "fc2.weight"))]
    assert ffn_weights and all(not torch.allclose(live[k], plain[k]) for k in ffn_weights)


TEXT_TRAINABLE = [
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
]
EXPECTED_TRAINABLE = {
    "bert": [f"encoder.layer.{i}.{n}" for i in COMPRESSED for n in TEXT_TRAINABLE],
    "roberta": [f"encoder.layer.{i}.{n}" for i in COMPRESSED for n in TEXT_TRAINABLE],
    "vit": [f"layers.{i}.mlp.{n}" for i in COMPRESSED for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")],
}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_distillation_parameters_are_exactly_the_compressed_ffns(fm_dirs, name):
    fm, sub = teacher_and_student(fm_dirs, name)
    named = distillation_parameters(sub, compressed_layers(sub.config))
    assert sorted(n for n, _ in named) == sorted(EXPECTED_TRAINABLE[name])
    own = dict(sub.named_parameters())
    for key, param in named:
        assert own[key] is param
    prepare_for_distillation(fm, sub, [p for _, p in named])
    assert not fm.training and not sub.training
    assert not any(p.requires_grad for p in fm.parameters())
    assert sorted(n for n, p in sub.named_parameters() if p.requires_grad) == sorted(EXPECTED_TRAINABLE[name])


# ----------------------------------------------------------------------------------------------- training loop
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_kd_training_moves_only_the_trainable_set_and_lowers_the_loss(fm_dirs, name):
    fm, sub = teacher_and_student(fm_dirs, name)
    kd, named = kd_setup(fm, sub, alpha=0.0)
    data = examples(name, 16)
    whole = collate(data)
    with torch.no_grad():
        loss_before = kd(whole)[0].item()
    student_before, teacher_before = snapshot(sub), snapshot(fm)
    result = train(
        named,
        data,
        collate,
        kd,
        optim=optim(lr=1e-3),
        total_steps=8,
        micro_batch_size=4,
        effective_batch_size=8,
        seed=0,
        device=torch.device("cpu"),
        log_every=1,
        progress=False,
    )
    assert result["steps"] == 8 and [h["step"] for h in result["history"]] == list(range(1, 9))
    with torch.no_grad():
        loss_after = kd(whole)[0].item()
    assert loss_after < 0.7 * loss_before
    trainable = {n for n, _ in named}
    for key, value in snapshot(sub).items():
        if key in trainable:
            assert not torch.equal(value, student_before[key]), f"{key} did not move"
        else:
            assert torch.equal(value, student_before[key]), f"{key} moved"
    for key, value in snapshot(fm).items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} moved"


@pytest.mark.parametrize(
    "num_examples, batch, epochs, expected",
    [
        (100, 8, 1.0, 13),  # ceil(100 / 8)
        (100, 8, 2.0, 26),
        (100, 8, 0.5, 7),  # ceil(0.5 * 13)
        (100, 8, 2.5, 33),  # ceil(32.5)
        (64, 8, 1.0, 8),
        (5, 8, 0.01, 1),
        (100, 8, 0.0009, 1),  # below 1e-3 epochs: exactly one step (spec §4.10)
        (100, 8, 0.0, 1),
    ],
)
def test_steps_for(num_examples, batch, epochs, expected):
    assert steps_for(num_examples, batch, epochs) == expected


def test_batch_plan_is_deterministic_covers_each_epoch_and_resumes():
    n, size = 10, 4
    plan = list(itertools.islice(batch_plan(n, size, seed=3), 9))  # three epochs of 4 + 4 + 2
    assert plan == list(itertools.islice(batch_plan(n, size, seed=3), 9))
    assert plan != list(itertools.islice(batch_plan(n, size, seed=4), 9))
    assert [len(b) for b in plan] == [4, 4, 2] * 3
    epochs = [sum(plan[e * 3 : e * 3 + 3], []) for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]  # a fresh permutation per epoch
    for start in (1, 3, 5):
        resumed = list(itertools.islice(batch_plan(n, size, seed=3, start_step=start), 9 - start))
        assert resumed == plan[start:]


class PerExampleKD:
    """Unnormalised hidden-state MSE of the compressed layers: a mean over examples, so any cut of an effective
    batch into micro-batches has the same gradient. (LayerKD's normalised MSE divides by the *micro-batch's*
    teacher mean square, which makes it depend on the cut wherever that mean square varies between micro-batches,
    e.g. ViT's un-normalised residual stream.)"""

    def __init__(self, kd: LayerKD) -> None:
        self.kd = kd

    def __call__(self, batch):
        teacher = self.kd.teacher(**batch, output_hidden_states=True).hidden_states
        student = self.kd.student(**batch, output_hidden_states=True).hidden_states
        terms = [(teacher[t + 1].detach() - student[s + 1]).pow(2).mean() for t, s in self.kd.pairs]
        return torch.stack(terms).mean(), {}


def _train_kd(fm_dirs, name, steps, micro, start_step=0, resume_state=None, sub=None, on_step=None, per_example=False):
    fm, fresh = teacher_and_student(fm_dirs, name)
    sub = fresh if sub is None else sub
    kd, named = kd_setup(fm, sub, alpha=1.0)
    train(
        named,
        examples(name, 20),
        collate,
        PerExampleKD(kd) if per_example else kd,
        optim=OptimConfig(learning_rate=1e-3, weight_decay=0.01, lr_scheduler_type="linear", warmup_ratio=0.2),
        total_steps=steps,
        micro_batch_size=micro,
        effective_batch_size=8,
        seed=1,
        device=torch.device("cpu"),
        start_step=start_step,
        resume_state=resume_state,
        on_step=on_step,
        progress=False,
    )
    return sub


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_micro_batch_size_does_not_change_the_update(fm_dirs, name):
    """Effective batch 8 as 4x2, 2x4 or 1x8 micro-batches (20 examples: the third step's batch is 4 items)."""
    runs = [snapshot(_train_kd(fm_dirs, name, steps=3, micro=m, per_example=True)) for m in (2, 4, 8)]
    for other in runs[1:]:
        for key in runs[0]:
            torch.testing.assert_close(other[key], runs[0][key], rtol=0, atol=1e-6)
    fresh = snapshot(teacher_and_student(fm_dirs, name)[1])
    assert sum(not torch.equal(runs[0][k], fresh[k]) for k in fresh) == len(EXPECTED_TRAINABLE[name])


def test_layer_kd_is_micro_batch_invariant_on_post_ln_text_models(fm_dirs):
    """BERT's layer outputs are LayerNorm outputs (mean square ~1 per token), so LayerKD's normaliser is the same
    for every micro-batch and the distillation update does not depend on the cut either."""
    runs = [snapshot(_train_kd(fm_dirs, "bert", steps=3, micro=m)) for m in (2, 4)]
    for key in runs[0]:
        torch.testing.assert_close(runs[1][key], runs[0][key], rtol=0, atol=1e-6)


def test_resumed_training_matches_an_uninterrupted_run(fm_dirs):
    """Weights + optimizer/scheduler state saved after step 2, then steps 3..5 again: the same final weights."""
    saved = {}
    _, sub_a = teacher_and_student(fm_dirs, "bert")

    def keep_state(step, optimizer, scheduler):
        if step == 2:
            saved["weights"] = snapshot(sub_a)
            saved["state"] = copy.deepcopy({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})

    _train_kd(fm_dirs, "bert", steps=5, micro=4, sub=sub_a, on_step=keep_state)
    _, sub_b = teacher_and_student(fm_dirs, "bert")
    with torch.no_grad():
        for key, param in sub_b.named_parameters():
            param.copy_(saved["weights"][key])
    _train_kd(fm_dirs, "bert", steps=5, micro=4, sub=sub_b, start_step=2, resume_state=saved["state"])
    final_a, final_b = snapshot(sub_a), snapshot(sub_b)
    assert any(not torch.equal(final_a[k], saved["weights"][k]) for k in final_a)
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_non_finite_loss_stops_before_the_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(16)]
    calls = {"n": 0}
    after_step: dict[int, dict] = {}

    def loss_fn(batch):
        calls["n"] += 1
        loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
        if calls["n"] == 6:  # step 3, second micro-batch: the first one has already put gradients in place
            loss = loss * float("nan")
        return loss, {}

    def on_step(step, optimizer, scheduler):
        after_step[step] = snapshot(model)

    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(
            list(model.named_parameters()),
            data,
            lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]},
            loss_fn,
            optim=optim(lr=0.1),
            total_steps=5,
            micro_batch_size=2,
            effective_batch_size=4,
            seed=0,
            device=torch.device("cpu"),
            on_step=on_step,
            progress=False,
        )
    assert sorted(after_step) == [1, 2]
    for key, value in snapshot(model).items():
        assert torch.equal(value, after_step[2][key]), key


# ----------------------------------------------------------------------------------------------- corpora (§3.1)
@pytest.fixture(scope="module")
def tokenizer(fm_dirs):
    return AutoTokenizer.from_pretrained(fm_dirs["bert"])


def test_text_blocks_are_consecutive_block_size_slices_of_the_token_stream(tmp_path, tokenizer):
    data = corpus.load_text_corpus(str(tiny.write_text_corpus(tmp_path / "c.txt", lines=60)))
    stream = [t for ids in tokenizer(list(data["text"]))["input_ids"] for t in ids]
    blocks = corpus.text_blocks(data, tokenizer, block_size=16, cache_dir=str(tmp_path / "cache"))
    assert len(blocks) == len(stream) // 16
    assert set(blocks.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    for row in blocks:
        assert len(row["input_ids"]) == len(row["attention_mask"]) == len(row["token_type_ids"]) == 16
    assert [t for row in blocks for t in row["input_ids"]] == stream[: len(blocks) * 16]
    cached = corpus.text_blocks(data, tokenizer, block_size=16, cache_dir=str(tmp_path / "cache"))
    assert cached["input_ids"] == blocks["input_ids"]

    # per map batch: the remainder of each batch is dropped
    per_batch = corpus.text_blocks(data, tokenizer, block_size=16, map_batch_size=20)
    expected = sum(
        len([t for ids in tokenizer(list(data["text"])[b : b + 20])["input_ids"] for t in ids]) // 16
        for b in (0, 20, 40)
    )
    assert len(per_batch) == expected


def test_a_batch_shorter_than_a_block_becomes_one_short_block(tmp_path, tokenizer):
    data = datasets.Dataset.from_dict({"text": ["the market", "a film star"]})
    blocks = corpus.text_blocks(data, tokenizer, block_size=512)
    total = sum(len(ids) for ids in tokenizer(list(data["text"]))["input_ids"])
    assert len(blocks) == 1 and len(blocks[0]["input_ids"]) == total < 512
    padded = corpus.text_collator(tokenizer)([blocks[0], {k: v[:3] for k, v in blocks[0].items()}])
    assert padded["input_ids"].shape == (2, total)
    assert padded["attention_mask"][1].tolist() == [1] * 3 + [0] * (total - 3)


def test_text_sources_load_from_txt_jsonl_folders_and_hf_folders(tmp_path):
    txt = tiny.write_text_corpus(tmp_path / "files" / "a.txt", lines=30, seed=1)
    jsonl = tiny.write_text_corpus(tmp_path / "files" / "sub" / "b.jsonl", lines=20, seed=2)
    (tmp_path / "files" / "notes.md").write_text("not a corpus file\n")
    lines = [line for line in txt.read_text().splitlines() if line]
    from_txt = corpus.load_text_corpus(str(txt))
    assert from_txt.column_names == ["text"] and from_txt["text"] == lines
    from_jsonl = corpus.load_text_corpus(str(jsonl))
    assert from_jsonl["text"] == [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    from_folder = corpus.load_text_corpus(str(tmp_path / "files"))
    assert sorted(from_folder["text"]) == sorted(lines + list(from_jsonl["text"]))

    datasets.Dataset.from_dict({"sentence": ["a b", "c d", "e"], "label": [0, 1, 0]}).save_to_disk(str(tmp_path / "hf"))
    from_hf = corpus.load_text_corpus(str(tmp_path / "hf"))
    assert from_hf.column_names == ["text"] and from_hf["text"] == ["a b", "c d", "e"]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x y"]})}).save_to_disk(str(tmp_path / "dd"))
    assert corpus.load_text_corpus(str(tmp_path / "dd"))["text"] == ["x y"]

    joined = corpus.load_text_corpora([str(txt), None, str(jsonl)])
    assert len(joined) == 50
    assert corpus.corpus_name([str(tmp_path / "BookCorpus"), None, str(tmp_path / "wikipedia/")]) == (
        "bookcorpus&wikipedia"
    )


def _bad_corpus(tmp_path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "nowhere")
    if kind == "empty_txt":
        (tmp_path / "empty.txt").write_text("\n  \n")
        return str(tmp_path / "empty.txt")
    if kind == "jsonl_without_text":
        (tmp_path / "x.jsonl").write_text(json.dumps({"body": "the market"}) + "\n")
        return str(tmp_path / "x.jsonl")
    if kind == "hf_without_text":
        datasets.Dataset.from_dict({"body": ["a"], "label": [1]}).save_to_disk(str(tmp_path / "hf"))
        return str(tmp_path / "hf")
    if kind == "hf_empty":
        datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "hf_empty"))
        return str(tmp_path / "hf_empty")
    if kind == "wrong_suffix":
        (tmp_path / "x.csv").write_text("text\nthe market\n")
        return str(tmp_path / "x.csv")
    if kind == "unreadable_folder":
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "state.json").write_text("{not json")
        return str(tmp_path / "junk")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["missing", "empty_txt", "jsonl_without_text", "hf_without_text", "hf_empty", "wrong_suffix", "unreadable_folder"],
)
def test_bad_text_corpus_is_a_corpus_error(tmp_path, kind):
    with pytest.raises(corpus.CorpusError):
        corpus.load_text_corpus(_bad_corpus(tmp_path, kind))


@pytest.mark.parametrize("line", ["{not json", json.dumps("a string with text in it")])
def test_malformed_jsonl_line_is_a_corpus_error(tmp_path, line):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "the market"}) + "\n" + line + "\n")
    with pytest.raises(corpus.CorpusError):
        corpus.load_text_corpus(str(tmp_path / "x.jsonl"))


def test_no_text_source_at_all_is_a_corpus_error():
    with pytest.raises(corpus.CorpusError):
        corpus.load_text_corpora([None, ""])


@pytest.mark.parametrize("train_mode", [True, False])
def test_image_corpus_from_an_hf_folder_gives_normalised_pixel_values(tmp_path, train_mode):
    folder = tiny.write_image_corpus(tmp_path / "images", count=6)
    transform = corpus.image_transform(8, [0.5], [0.5], 1, train=train_mode)
    images = corpus.load_image_corpus(str(folder), transform)
    assert len(images) == 6
    item = images[0]
    assert set(item) == {"pixel_values"} and item["pixel_values"].shape == (1, 8, 8)
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    batch = corpus.image_collate([images[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 8, 8) and batch["pixel_values"].dtype == torch.float32
    if not train_mode:  # resize + centre crop of an 8x8 image is the image itself, then (x - 0.5) / 0.5
        raw = torch.tensor(np.asarray(images.source[0]["image"]), dtype=torch.float32) / 255
        torch.testing.assert_close(item["pixel_values"][0], (raw - 0.5) / 0.5)


def test_bad_image_corpus_is_a_corpus_error(tmp_path):
    with pytest.raises(corpus.CorpusError):
        corpus.load_image_corpus(str(tmp_path / "nowhere"), None)
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "texts"))
    with pytest.raises(corpus.CorpusError, match="no image column"):
        corpus.load_image_corpus(str(tmp_path / "texts"), None)


def test_kd_runs_on_real_corpus_blocks(fm_dirs, tmp_path, tokenizer):
    """The collated blocks feed LayerKD directly (token_type_ids included for BERT)."""
    blocks = corpus.text_blocks(
        corpus.load_text_corpus(str(tiny.write_text_corpus(tmp_path / "c.txt", lines=30))), tokenizer, block_size=16
    )
    fm, sub = teacher_and_student(fm_dirs, "bert")
    kd, _ = kd_setup(fm, sub)
    loss, parts = kd(corpus.text_collator(tokenizer)([blocks[i] for i in range(3)]))
    assert loss.ndim == 0 and parts["hidden_loss"] > 0
    assert len(encoder_layers(sub, family_of(sub.config))) == tiny.LAYERS
