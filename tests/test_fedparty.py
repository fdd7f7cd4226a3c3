"""Federated arithmetic and neuron-level alignment on tiny models (spec §4.5–4.10)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel

from federated_proxy_finetuning.adapters import LayerRenamer, aggregate, lora_target_regex
from federated_proxy_finetuning.align import (
    FrozenNeurons,
    ZeroActivationCounter,
    align,
    next_grad_accum,
    split_neurons,
    zero_activation_rates,
)
from federated_proxy_finetuning.client import client_seed, round_learning_rate
from federated_proxy_finetuning.flag_groups import AlignSettings
from federated_proxy_finetuning.sampling import sample_schedule
from sub_model_construct.families import FAMILIES, encoder_layers
from sub_model_construct.sub_model import build_sub_model, compressed_layers
from tests import tiny


class OneProcess:
    """The parts of an Accelerator the server-side loops use, for a single process."""

    num_processes, process_index, is_main_process = 1, 0, True
    device = torch.device("cpu")

    def reduce(self, tensor, reduction="sum"):
        return tensor


def test_weighted_aggregation_pairs_weights_with_their_updates():
    # spec §4.7 / §6.8: client sizes 1 and 3 -> weights 0.25 / 0.75 on their own tensors
    a, b = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}
    out = aggregate([(a, 1, 1), (b, 3, 1)], "weighted", a, total_examples=4, num_clients=2)
    assert torch.allclose(out["w"], torch.tensor([3.0, 1.0]))
    uniform = aggregate([(a, 1, 1), (b, 3, 1)], "uniform", a, total_examples=4, num_clients=2)
    assert torch.allclose(uniform["w"], torch.tensor([2.0, 2.0]))
    twice = aggregate([(a, 1, 2), (b, 1, 1)], "uniform", a, total_examples=2, num_clients=2)
    assert torch.allclose(twice["w"], torch.tensor([4 / 3, 8 / 3]))


def test_equal_sizes_make_weighted_equal_uniform():
    states = [({"w": torch.randn(3)}, 10, 1) for _ in range(4)]
    w = aggregate(states, "weighted", states[0][0], 40, 4)["w"]
    u = aggregate(states, "uniform", states[0][0], 40, 4)["w"]
    assert torch.allclose(w, u)


def test_round_learning_rates():
    eta, rounds = 1.0, 5
    fixed = [round_learning_rate(2, eta, r, rounds, 0.95, False) for r in range(1, 6)]
    assert fixed == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    reference = [round_learning_rate(2, eta, r, rounds, 0.95, True) for r in range(1, 6)]
    assert reference == pytest.approx([1.0, 0.6, 0.4, 0.2, 0.2])  # spec §4.8: (R-1)/R skipped, last eta0/R
    assert round_learning_rate(0, eta, 3, rounds, 0.5, False) == pytest.approx(0.25)
    assert round_learning_rate(1, eta, 3, rounds, 0.5, False) == pytest.approx(0.25)
    assert round_learning_rate(-1, eta, 3, rounds, 0.5, False) == eta


def test_sampling_is_seeded_and_sized():
    s1 = sample_schedule(20, 0.2, 6, "uniform", [5] * 20, seed=3)
    s2 = sample_schedule(20, 0.2, 6, "uniform", [5] * 20, seed=3)
    assert s1 == s2 and all(len(set(r)) == 4 for r in s1)
    assert sample_schedule(5, 0.2, 2, "full", [1] * 5, 0) == [list(range(5))] * 2
    md = sample_schedule(5, 0.6, 3, "md", [1, 1, 1, 1, 100], 0)
    assert all(len(r) == 3 for r in md) and sum(r.count(4) for r in md) >= 6
    assert client_seed(1, 2, 3) != client_seed(1, 3, 2)


def test_layer_renamer_maps_emulator_layers_to_fm_layers():
    renamer = LayerRenamer(FAMILIES["bert"], [0, 2, 5])
    key = "base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.weight"
    fm_key = renamer.to_fm({key: 1})
    assert list(fm_key) == ["base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.weight"]
    assert renamer.to_sub(fm_key) == {key: 1}


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_lora_regex_targets_q_k_v_o_of_chosen_layers(family):
    import re

    fam = FAMILIES[family]
    pattern = re.compile(lora_target_regex(fam, [1, 3]))
    prefix = "bert." if family == "bert" else "vit."
    for name in fam.attention:
        assert pattern.match(f"{prefix}{fam.layers}.1.{name}")
        assert not pattern.match(f"{prefix}{fam.layers}.2.{name}")
    assert not pattern.match(f"{prefix}{fam.layers}.1.{fam.ffn.inputs[0]}")


def test_split_neurons_freezes_lowest_zero_rates():
    rates = torch.tensor([0.9, 0.0, 0.5, 0.1, 0.7, 0.2])
    frozen, updated = split_neurons(rates, 0.5, torch.Generator().manual_seed(0))
    assert frozen.tolist() == [1, 3, 5] and updated.tolist() == [0, 2, 4]
    ties = torch.zeros(10)
    picks = {tuple(split_neurons(ties, 0.5, torch.Generator().manual_seed(s))[0].tolist()) for s in range(5)}
    assert len(picks) > 1  # ties broken by the seeded shuffle


def test_grad_accum_schedule():
    seq, g = [], 32
    for _ in range(6):
        g = next_grad_accum(g, 2, 0.02)
        seq.append(g)
    assert seq == [16, 8, 4, 2, 2, 2]
    assert next_grad_accum(32, 2, 1e-4) == 32


@pytest.fixture()
def tiny_pair(tmp_path):
    fm = AutoModel.from_pretrained(tiny.make_text_fm(tmp_path / "fm", "bert")).eval()
    return fm, build_sub_model(fm, [0, 3], 16)


def test_zero_activation_counter_counts_positions_and_zeros(tiny_pair):
    _, sub = tiny_pair
    layers = compressed_layers(sub.config)
    counter = ZeroActivationCounter(sub, layers)
    # force exact zeros in one neuron of layer 1: a huge negative bias gives GELU(-inf-ish) == 0
    w_in, _ = tiny.ffn_pair(encoder_layers(sub, FAMILIES["bert"])[1], FAMILIES["bert"])
    with torch.no_grad():
        w_in.bias[5] = -1e4
    sub(input_ids=torch.randint(5, 40, (2, 7)))
    stats = counter.remove()
    assert stats["positions"] == {1: 14, 2: 14}
    assert stats["zero_counts"][1][5] == 14
    rates = zero_activation_rates([stats, stats])
    assert rates[1][5] == 1.0


@pytest.mark.parametrize("restore", [True, False], ids=["mask-and-restore", "mask-alone"])
def test_alignment_keeps_frozen_neurons_bit_identical_and_moves_the_others(tiny_pair, restore, monkeypatch):
    """With the restore switched off, the gradient mask alone must hold the frozen neurons (AdamW without weight
    decay never moves a parameter whose gradient is always zero); the mask is also checked where it acts."""
    masked = []
    mask = FrozenNeurons.mask_gradients

    def checked_mask(self):
        grads = [(piece.param.grad, piece.axis, idx) for piece, idx, _ in self.items if piece.param.grad is not None]
        before = [grad.index_select(axis, idx).abs().sum().item() for grad, axis, idx in grads]
        mask(self)
        assert {piece.name for piece, _, _ in self.items} >= {"intermediate.dense.weight", "output.dense.weight"}
        for grad, axis, idx in grads:  # every per-neuron tensor: input rows, their bias, output columns
            assert grad.index_select(axis, idx).abs().sum() == 0
        masked.append(sum(before) > 0)

    monkeypatch.setattr(FrozenNeurons, "mask_gradients", checked_mask)
    if not restore:
        monkeypatch.setattr(FrozenNeurons, "restore", lambda self: None)
    fm, sub = tiny_pair
    family = FAMILIES["bert"]
    layers = compressed_layers(sub.config)
    data = [{"input_ids": torch.randint(5, 40, (12,)).tolist()} for _ in range(16)]

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    rates = {i: torch.rand(16, generator=torch.Generator().manual_seed(i)) for i in layers}
    before = copy.deepcopy(sub)
    config = AlignSettings(batch_size=4, learning_rate=1e-2, epochs=1.0, retained_ratio=0.5)
    result = align(fm, sub, [(i, i) for i in layers], rates, data, collate, config, 1, seed=0, accelerator=OneProcess())
    assert result["steps"] == 4 and result["frozen_per_layer"] == {1: 8, 2: 8}
    assert len(masked) == 4 and all(masked)  # every step masked frozen neurons that had gradients
    for i in layers:
        frozen, updated = split_neurons(rates[i], 0.5, torch.Generator().manual_seed(0))
        new_in, new_out = tiny.ffn_pair(encoder_layers(sub, family)[i], family)
        old_in, old_out = tiny.ffn_pair(encoder_layers(before, family)[i], family)
        assert torch.equal(new_in.weight[frozen], old_in.weight[frozen])
        assert torch.equal(new_in.bias[frozen], old_in.bias[frozen])
        assert torch.equal(new_out.weight[:, frozen], old_out.weight[:, frozen])
        assert not torch.equal(new_in.weight[updated], old_in.weight[updated])
        assert not torch.equal(new_out.weight[:, updated], old_out.weight[:, updated])
    # nothing outside the compressed FFNs moved; the teacher did not move
    for (name, p), (_, q) in zip(sub.named_parameters(), before.named_parameters()):
        if not any(
            f"layer.{i}.{part}" in name for i in layers for part in ("intermediate", "output.dense", "output.LayerNorm")
        ):
            assert torch.equal(p, q), name


def test_a_cut_ffn_gathers_and_scatters_its_kept_neurons_only():
    """With kept neurons recorded, the output matrix's lora_A columns and the input matrices' lora_B rows of a cut
    layer go to the client at those neurons and come back into the FM-shaped tensor; the attention's output.dense
    (a name ending like the FFN's) and the whole layers are left alone."""
    renamer = LayerRenamer(FAMILIES["bert"], [0, 1, 2], {1: torch.tensor([0, 2])})
    prefix = "base_model.model.bert.encoder.layer"
    fm = {
        f"{prefix}.1.intermediate.dense.lora_B.weight": torch.arange(8.0).reshape(4, 2),
        f"{prefix}.1.output.dense.lora_A.weight": torch.arange(8.0).reshape(2, 4),
        f"{prefix}.1.attention.output.dense.lora_A.weight": torch.ones(2, 6),
        f"{prefix}.0.output.dense.lora_A.weight": torch.ones(2, 4),
    }
    sub = renamer.to_sub(fm)
    assert sub[f"{prefix}.1.intermediate.dense.lora_B.weight"].tolist() == [[0, 1], [4, 5]]
    assert sub[f"{prefix}.1.output.dense.lora_A.weight"].tolist() == [[0, 2], [4, 6]]
    assert sub[f"{prefix}.1.attention.output.dense.lora_A.weight"].shape == (2, 6)
    assert sub[f"{prefix}.0.output.dense.lora_A.weight"].shape == (2, 4)
    trained = {k: v + 100 for k, v in sub.items()}
    back = renamer.to_fm(trained, fm)
    assert back[f"{prefix}.1.output.dense.lora_A.weight"].tolist() == [[100, 1, 102, 3], [104, 5, 106, 7]]
    assert back[f"{prefix}.1.intermediate.dense.lora_B.weight"].tolist() == [[100, 101], [2, 3], [104, 105], [6, 7]]
    assert torch.equal(back[f"{prefix}.1.attention.output.dense.lora_A.weight"], torch.full((2, 6), 101.0))
