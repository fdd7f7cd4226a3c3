"""sub_model_construct/ffn.py: the FFN as one object. A BERT FFN (one input matrix) and a gated, LLaMA-style FFN
(two input matrices, gate and up, and a down projection) through the same object: saliency by hand, slicing keeps
the kept neurons' contribution exactly, the per-neuron slices and shared tensors, a neuron state round trip, and the
changed-parameter count of an alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from sub_model_construct.families import FAMILIES
from sub_model_construct.ffn import FFN, changed_count, frozen_state

GATED = FFN(inputs=("mlp.gate_proj", "mlp.up_proj"), output="mlp.down_proj")
HIDDEN, WIDTH = 8, 12


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=WIDTH, hidden_act="silu", num_attention_heads=2)
        self.mlp = LlamaMLP(config)


def gated_block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    return Block()


def test_gated_saliency_is_the_norm_of_the_neurons_gate_and_up_rows_and_down_column():
    block = gated_block()
    saliency = GATED.saliency(block)
    gate, up, down = block.mlp.gate_proj.weight, block.mlp.up_proj.weight, block.mlp.down_proj.weight
    for j in range(WIDTH):
        by_hand = torch.cat([gate[j], up[j], down[:, j]]).norm()
        assert saliency[j].item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert GATED.width(block) == WIDTH
    assert GATED.per_neuron(block) == 3 * HIDDEN and GATED.shared_count(block) == 0  # no biases, no norm


def test_slicing_a_gated_ffn_keeps_the_kept_neurons_contribution_exactly():
    block = gated_block()
    x = torch.randn(5, HIDDEN)
    keep = torch.tensor([1, 4, 5, 9])
    with torch.no_grad():
        hidden = nn.functional.silu(block.mlp.gate_proj(x)) * block.mlp.up_proj(x)
        expected = hidden[:, keep] @ block.mlp.down_proj.weight[:, keep].T
        GATED.slice(block, keep)
        assert GATED.width(block) == len(keep)
        assert torch.allclose(block.mlp(x), expected, atol=1e-6)


def test_neuron_state_round_trip_and_frozen_slices():
    source, target = gated_block(0), gated_block(1)
    neurons = torch.tensor([0, 3, 7])
    state = GATED.neuron_state(source, neurons)
    assert sorted(state) == ["mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"]
    assert state["mlp.down_proj.weight"].shape == (HIDDEN, 3) and state["mlp.gate_proj.weight"].shape == (3, HIDDEN)
    before = target.mlp.up_proj.weight.detach().clone()
    GATED.load_neuron_state(target, neurons, state)
    assert torch.equal(target.mlp.up_proj.weight[neurons], source.mlp.up_proj.weight[neurons])
    others = torch.tensor([j for j in range(WIDTH) if j not in neurons.tolist()])
    assert torch.equal(target.mlp.up_proj.weight[others], before[others])
    saved = frozen_state(GATED, source, neurons)
    assert [(piece.name, piece.axis) for piece, _ in saved] == [
        ("mlp.gate_proj.weight", 0),
        ("mlp.up_proj.weight", 0),
        ("mlp.down_proj.weight", 1),
    ]
    assert changed_count(GATED, source, frozen=4) == (WIDTH - 4) * 3 * HIDDEN


def test_bert_ffn_counts_biases_and_the_post_ffn_layernorm():
    from transformers import BertConfig, BertModel

    from tests import tiny

    config = BertConfig(
        hidden_size=tiny.HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=tiny.HEADS,
        intermediate_size=tiny.FFN,
        vocab_size=30,
    )
    family = FAMILIES["bert"]
    layer = BertModel(config).encoder.layer[0]
    ffn = family.ffn
    assert ffn.width(layer) == tiny.FFN
    assert ffn.per_neuron(layer) == tiny.HIDDEN + 1 + tiny.HIDDEN  # its input row, bias and output column
    assert ffn.shared_count(layer) == tiny.HIDDEN + 2 * tiny.HIDDEN  # output bias + LayerNorm weight and bias
    assert changed_count(ffn, layer, frozen=0) == tiny.FFN * ffn.per_neuron(layer) + ffn.shared_count(layer)
    names = [name for name, _ in ffn.parameters(layer)]
    assert names == [
        "intermediate.dense.weight",
        "intermediate.dense.bias",
        "output.dense.weight",
        "output.dense.bias",
        "output.LayerNorm.weight",
        "output.LayerNorm.bias",
    ]
    with pytest.raises(ValueError, match="one input matrix"):
        GATED.product(gated_block())
    with pytest.raises(ValueError, match="at least one input"):
        FFN(inputs=(), output="x")
