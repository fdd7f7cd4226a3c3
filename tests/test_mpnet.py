"""The MPNet family row (the optional paper-shape FM all-mpnet-base-v2): module names, sub-FM construction, strict
save/load, LoRA targets, the FedOT layer-drop emulator and the paper's parameter counts (spec §2.8).

MPNet differs from BERT in its attention names (`attention.attn.{q,k,v,o}`) and in one relative position bias table,
`encoder.relative_attention_bias`, that the encoder computes once and hands to every layer: it lives outside the
layers, so it must be copied whole and never compressed or counted."""

from __future__ import annotations

import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, MPNetConfig, MPNetModel

from federated_proxy_finetuning.adapters import lora_target_regex
from sub_model_construct.distill_model import distillation_parameters
from sub_model_construct.emulator import build_layer_drop_emulator
from sub_model_construct.families import (
    FAMILIES,
    UnsupportedModelError,
    backbone,
    encoder_layers,
    family_of,
)
from sub_model_construct.sub_model import SubModelError, build_sub_model, encoder_layer_parameters, mebi, select_neurons
from sub_model_construct.sub_model_io import load_sub_model, save_sub_model
from tests import tiny

MPNET = FAMILIES["mpnet"]
RETAINED, COMPRESSED, RANK = [0, 3], [1, 2], 16  # tiny MPNet: 4 layers of FFN width 64
BIAS = "encoder.relative_attention_bias.weight"
QKVO = ("q", "k", "v", "o")


@pytest.fixture(scope="module")
def fm() -> MPNetModel:
    torch.manual_seed(0)
    model = MPNetModel(tiny.mpnet_config()).eval()
    with torch.no_grad():  # stock init leaves biases at 0 and LayerNorms at 1: perturb so every copy is checked
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def inputs(batch: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 64, (batch, length), generator=gen)  # 0-2 are MPNet's bos/pad/eos
    mask = torch.ones_like(ids)
    ids[0, 9:], mask[0, 9:] = 1, 0  # one padded row (pad id 1), so the mask path is exercised too
    return {"input_ids": ids, "attention_mask": mask}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- the family row
def test_mpnet_row_names_resolve_on_the_stock_model(fm):
    assert family_of(fm.config) is MPNET and family_of("mpnet") is MPNET
    layers = encoder_layers(fm, MPNET)
    assert len(layers) == tiny.LAYERS
    for layer in layers:
        w_in, w_out = tiny.ffn_pair(layer, MPNET)
        assert (w_in.in_features, w_in.out_features, w_out.out_features) == (tiny.HIDDEN, tiny.FFN, tiny.HIDDEN)
        assert isinstance(layer.get_submodule(MPNET.ffn.norm), nn.LayerNorm)
        assert isinstance(layer.get_submodule(MPNET.ffn_dropout), nn.Dropout)
        projections = [layer.get_submodule(path) for path in MPNET.attention]
        assert [p.in_features for p in projections] == [tiny.HIDDEN] * 4
        assert all(isinstance(p, nn.Linear) for p in projections)
    # the bias table belongs to the encoder, not to a layer
    assert isinstance(fm.encoder.relative_attention_bias, nn.Embedding)
    assert not any("relative_attention_bias" in k for k in layers.state_dict())

    headed = AutoModelForSequenceClassification.from_config(tiny.mpnet_config(num_labels=3))
    head = headed.get_submodule(MPNET.head[0])
    assert isinstance(head.dense, nn.Linear) and head.out_proj.out_features == 3
    assert backbone(headed) is headed.mpnet and len(encoder_layers(headed, MPNET)) == tiny.LAYERS


def test_unsupported_family_message_lists_mpnet():
    with pytest.raises(UnsupportedModelError, match="mpnet"):
        family_of("gpt2")


def test_distillation_trains_only_the_ffn_and_its_layernorm(fm):
    # spec §3.2: attention (attn.q/k/v/o and the attention LayerNorm) stays frozen, as for BERT
    names = [name for name, _ in distillation_parameters(fm, COMPRESSED)]
    expected = [
        f"encoder.layer.{i}.{module}.{p}"
        for i in COMPRESSED
        for module in ("intermediate.dense", "output.dense", "output.LayerNorm")
        for p in ("weight", "bias")
    ]
    assert sorted(names) == sorted(expected)


def test_stock_save_and_from_pretrained_keep_every_weight(fm, tmp_path):
    # what fetch_assets.sh --paper-shape relies on: an MPNet folder loads with AutoModel under transformers 5
    fm.save_pretrained(tmp_path / "fm")
    loaded = AutoModel.from_pretrained(tmp_path / "fm").eval()
    assert type(loaded) is MPNetModel
    expected = fm.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


# ----------------------------------------------------------------------------------------------- construction
def test_sub_fm_slices_salient_neurons_and_copies_the_rest(fm):
    before = state(fm)
    sub = build_sub_model(fm, RETAINED, RANK)
    for key, value in state(fm).items():  # the FM itself is not modified
        assert torch.equal(value, before[key]), key
    fm_layers, sub_layers = encoder_layers(fm, MPNET), encoder_layers(sub, MPNET)
    for i in RETAINED:
        for key, value in fm_layers[i].state_dict().items():
            assert torch.equal(sub_layers[i].state_dict()[key], value), (i, key)
    ffn_keys = (MPNET.ffn.inputs[0] + ".", MPNET.ffn.output + ".")
    for i in COMPRESSED:
        fm_in, fm_out = tiny.ffn_pair(fm_layers[i], MPNET)
        neurons = select_neurons(MPNET.ffn.saliency(fm_layers[i]), RANK)
        w_in, w_out = tiny.ffn_pair(sub_layers[i], MPNET)
        assert w_in.weight.shape == (RANK, tiny.HIDDEN)
        assert torch.equal(w_in.weight, fm_in.weight[neurons]) and torch.equal(w_in.bias, fm_in.bias[neurons])
        assert torch.equal(w_out.weight, fm_out.weight[:, neurons]) and torch.equal(w_out.bias, fm_out.bias)
        for key, value in fm_layers[i].state_dict().items():  # attention and layer norms
            if not key.startswith(ffn_keys):
                assert torch.equal(sub_layers[i].state_dict()[key], value), (i, key)
    sub_state = sub.state_dict()
    outside = [k for k in before if not k.startswith("encoder.layer.")]
    assert BIAS in outside and any(k.startswith("embeddings.") for k in outside)
    for key in outside:  # embeddings, relative position bias, pooler: copied whole
        assert torch.equal(sub_state[key], before[key]), key
    assert sub.config.ffn_widths == [tiny.FFN, RANK, RANK, tiny.FFN]


def test_full_width_sub_fm_computes_exactly_the_fm(fm):
    sub = build_sub_model(fm, [], tiny.FFN).eval()
    with torch.no_grad():
        expected, got = fm(**inputs()), sub(**inputs())
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(got.pooler_output, expected.pooler_output)


def test_strict_save_load_round_trip_bare_and_with_head(fm, tmp_path):
    sub = build_sub_model(fm, RETAINED, RANK).eval()
    folder = tmp_path / "sub"
    save_sub_model(sub, folder)
    assert BIAS in load_file(str(folder / "model.safetensors"))
    with torch.no_grad():
        expected = sub(**inputs()).last_hidden_state

    loaded = load_sub_model(folder).eval()
    assert type(loaded) is MPNetModel and loaded.config.ffn_widths == sub.config.ffn_widths
    with torch.no_grad():
        assert torch.equal(loaded(**inputs()).last_hidden_state, expected)

    # MPNetForSequenceClassification builds no pooler: the one tolerated difference
    headed = load_sub_model(folder, AutoModelForSequenceClassification, num_labels=3).eval()
    assert headed.mpnet.pooler is None
    with torch.no_grad():
        assert torch.equal(headed.mpnet(**inputs()).last_hidden_state, expected)
        assert headed(**inputs()).logits.shape == (3, 3)

    weights = load_file(str(folder / "model.safetensors"))
    del weights[BIAS]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SubModelError, match="relative_attention_bias"):
        load_sub_model(folder)


# ----------------------------------------------------------------------------------------------- LoRA targets
def test_lora_regex_matches_exactly_the_attention_projections_of_the_chosen_layers():
    headed = AutoModelForSequenceClassification.from_config(tiny.mpnet_config(num_labels=3))
    layers = [0, 2]
    pattern = re.compile(lora_target_regex(MPNET, layers))
    matched = {name for name, _ in headed.named_modules() if pattern.fullmatch(name)}
    assert matched == {f"mpnet.encoder.layer.{i}.attention.attn.{p}" for i in layers for p in QKVO}

    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=lora_target_regex(MPNET, layers), modules_to_save=["classifier"]
    )
    lora = get_peft_model(headed, config)
    adapted = {name.removesuffix(".lora_A") for name, _ in lora.named_modules() if name.endswith(".lora_A")}
    assert {name.split("base_model.model.")[1] for name in adapted} == matched
    assert lora(**inputs()).logits.shape == (3, 3)


# ----------------------------------------------------------------------------------------------- FedOT emulator
def test_layer_drop_emulator_copies_kept_layers_and_the_shared_position_bias(fm):
    emulator = build_layer_drop_emulator(fm, adapter_bottom=1, adapter_top=1, emulator_layers=1).eval()
    kept = emulator.config.layer_map
    assert kept[0] == 0 and kept[-1] == tiny.LAYERS - 1 and len(kept) == 3
    fm_layers, emulator_layers = encoder_layers(fm, MPNET), encoder_layers(emulator, MPNET)
    assert len(emulator_layers) == 3 == emulator.config.num_hidden_layers
    for j, i in enumerate(kept):
        for key, value in fm_layers[i].state_dict().items():
            assert torch.equal(emulator_layers[j].state_dict()[key], value), (j, key)
    assert torch.equal(emulator.state_dict()[BIAS], fm.state_dict()[BIAS])
    with torch.no_grad():
        got = emulator(**inputs(), output_hidden_states=True)
        expected = fm(**inputs(), output_hidden_states=True)
    assert len(got.hidden_states) == 4 and torch.isfinite(got.last_hidden_state).all()
    # the bottom layer sees the same input and the same position bias in both models
    assert torch.equal(got.hidden_states[1], expected.hidden_states[1])
    assert not torch.allclose(got.last_hidden_state, expected.last_hidden_state)


def test_emulator_that_keeps_every_layer_computes_exactly_the_fm(fm):
    emulator = build_layer_drop_emulator(fm, 1, 1, tiny.LAYERS - 2).eval()
    assert emulator.config.layer_map == list(range(tiny.LAYERS))
    with torch.no_grad():
        assert torch.equal(emulator(**inputs()).last_hidden_state, fm(**inputs()).last_hidden_state)


# ----------------------------------------------------------------------------------------------- sizes (§2.8)
def test_paper_shape_parameter_counts_from_the_config_only():
    config = MPNetConfig()  # all-mpnet-base-v2's shape: 12 layers, hidden 768, FFN 3072, 12 heads, 32 buckets
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (12, 768, 3072)
    with torch.device("meta"):  # shapes without allocating 420 MB
        fm = MPNetModel(config)
        sub = build_sub_model(fm, [0, 11], 768)
        emulator = build_layer_drop_emulator(fm, adapter_bottom=1, adapter_top=1, emulator_layers=5)
    assert encoder_layer_parameters(fm) == 85_054_464  # the same per layer as BERT-base / RoBERTa-base
    assert encoder_layer_parameters(sub) == 49_641_984
    assert (mebi(encoder_layer_parameters(fm)), mebi(encoder_layer_parameters(sub))) == ("81.1Mi", "47.3Mi")
    assert encoder_layer_parameters(emulator) == 7 * 85_054_464 // 12
    # the shared bias table (32 buckets x 12 heads) is outside the count and the same in the sub-FM
    assert sub.encoder.relative_attention_bias.weight.shape == (32, 12)
