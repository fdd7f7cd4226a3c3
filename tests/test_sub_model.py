"""Sub-FM construction (spec §2): the family table, neuron saliency and slicing, build/save/load, the paper's
parameter counts (spec §2.8) and the argument checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AlbertConfig,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    GPT2Config,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from sub_model_construct.emulator import build_layer_drop_emulator
from sub_model_construct.families import (
    FAMILIES,
    UnsupportedModelError,
    backbone,
    encoder_layers,
    family_of,
)
from sub_model_construct.modality import IMAGE
from sub_model_construct.sub_model import (
    SubModelError,
    build_sub_model,
    encoder_layer_parameters,
    mebi,
    select_neurons,
    sub_model_name,
    validate_construction,
)
from sub_model_construct.sub_model_io import load_sub_model, save_sub_model
from tests import tiny

FAMILY_NAMES = ["bert", "roberta", "vit"]
RETAINED, RANK = [0, 3], 16  # tiny FMs have 4 layers of FFN width 64
COMPRESSED = [1, 2]


@pytest.fixture(scope="module")
def fm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fms")
    return {name: tiny.make_fm(root / name, name) for name in FAMILY_NAMES}


def load_fm(fm_dirs, name: str) -> nn.Module:
    return AutoModel.from_pretrained(fm_dirs[name]).eval()


def head_class(name: str):
    return AutoModelForImageClassification if FAMILIES[name].modality is IMAGE else AutoModelForSequenceClassification


def example_inputs(name: str, batch: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    if name == "vit":
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=gen)}
    ids = torch.randint(5, 60, (batch, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # one padded row, so the mask path is exercised too
    return {"input_ids": ids, "attention_mask": mask}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_paths_resolve_on_stock_models(fm_dirs, name):
    fm = load_fm(fm_dirs, name)
    family = family_of(fm.config)
    assert family is FAMILIES[name] and family_of(name) is family
    layers = encoder_layers(fm, family)
    assert isinstance(layers, nn.ModuleList) and len(layers) == tiny.LAYERS
    for layer in layers:
        w_in, w_out = tiny.ffn_pair(layer, family)
        assert isinstance(w_in, nn.Linear) and (w_in.in_features, w_in.out_features) == (tiny.HIDDEN, tiny.FFN)
        assert isinstance(w_out, nn.Linear) and (w_out.in_features, w_out.out_features) == (tiny.FFN, tiny.HIDDEN)
        assert family.ffn.width(layer) == tiny.FFN
        if family.ffn.norm is not None:
            assert isinstance(layer.get_submodule(family.ffn.norm), nn.LayerNorm)
        assert isinstance(layer.get_submodule(family.ffn_dropout), nn.Dropout)
        for path in family.attention:
            projection = layer.get_submodule(path)
            assert isinstance(projection, nn.Linear)
            assert (projection.in_features, projection.out_features) == (tiny.HIDDEN, tiny.HIDDEN)
    # the head lives on the *For{Sequence,Image}Classification class, and the layers are found through it too
    headed = head_class(name).from_config(AutoConfig.from_pretrained(fm_dirs[name], num_labels=3))
    assert all(isinstance(headed.get_submodule(head), nn.Module) for head in family.head)
    assert backbone(headed) is not headed
    assert len(encoder_layers(headed, family)) == tiny.LAYERS


@pytest.mark.parametrize("config", [GPT2Config(n_layer=1), AlbertConfig(num_hidden_layers=1)], ids=["gpt2", "albert"])
def test_unsupported_model_type_names_the_supported_families(config):
    with pytest.raises(UnsupportedModelError) as caught:
        family_of(config)
    message = str(caught.value)
    assert config.model_type in message
    for name in FAMILY_NAMES:
        assert name in message
    with pytest.raises(UnsupportedModelError):
        family_of(config.model_type)


# ----------------------------------------------------------------------------------------------- saliency (§2.2)
# neuron -> (value put in W_in[j, 0], value put in W_out[1, j]); all other weights are zero except tiny noise
HAND_MADE = {5: (3.0, 0.0), 11: (0.0, 2.5), 40: (4.0, 4.0), 63: (1.5, 1.5), 20: (0.5, 0.5)}
TOP4 = [5, 11, 40, 63]  # saliencies 3.0, 2.5, 5.66, 2.12 beat neuron 20 (0.71) and the noise


def hand_made_layer(fm: nn.Module, family) -> nn.Module:
    layer = encoder_layers(fm, family)[1]
    w_in, w_out = tiny.ffn_pair(layer, family)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w_in.weight.copy_(1e-3 * torch.randn(w_in.weight.shape, generator=gen))
        w_out.weight.copy_(1e-3 * torch.randn(w_out.weight.shape, generator=gen))
        for j, (a, b) in HAND_MADE.items():
            w_in.weight[j, 0], w_out.weight[1, j] = a, b
        w_in.bias.copy_(torch.arange(tiny.FFN, dtype=torch.float))
        w_in.bias[30] = 1e6  # biases are not part of the saliency
        w_out.bias.copy_(torch.arange(tiny.HIDDEN, dtype=torch.float) - 7)
    return layer


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_saliency_selects_largest_norm_neurons_in_original_order(fm_dirs, name):
    fm = load_fm(fm_dirs, name)
    family = family_of(fm.config)
    layer = hand_made_layer(fm, family)
    w_in, w_out = tiny.ffn_pair(layer, family)
    saliency = family.ffn.saliency(layer)
    assert saliency.shape == (tiny.FFN,)
    for j, (a, b) in HAND_MADE.items():
        expected = torch.cat([w_in.weight[j], w_out.weight[:, j]]).norm()
        assert saliency[j].item() == pytest.approx(expected.item(), rel=1e-6)
        assert saliency[j].item() == pytest.approx((a * a + b * b) ** 0.5, rel=1e-3)
    chosen = select_neurons(saliency, len(TOP4))
    assert chosen.tolist() == TOP4  # ascending, not in order of saliency (40 is the largest)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_slice_ffn_copies_exactly_the_chosen_rows_columns_and_whole_output_bias(fm_dirs, name):
    fm = load_fm(fm_dirs, name)
    family = family_of(fm.config)
    layer = hand_made_layer(fm, family)
    old_in, old_out = (state(m) for m in tiny.ffn_pair(layer, family))
    untouched = {k: v for k, v in state(layer).items() if not k.startswith((family.ffn.inputs[0], family.ffn.output))}
    neurons = torch.tensor(TOP4)
    family.ffn.slice(layer, neurons)
    new_in, new_out = tiny.ffn_pair(layer, family)
    assert (new_in.out_features, new_out.in_features) == (len(TOP4), len(TOP4))
    assert torch.equal(new_in.weight, old_in["weight"][neurons])
    assert torch.equal(new_in.bias, old_in["bias"][neurons])
    assert torch.equal(new_out.weight, old_out["weight"][:, neurons])
    assert torch.equal(new_out.bias, old_out["bias"])
    after = state(layer)
    for key, value in untouched.items():
        assert torch.equal(after[key], value), key


# ----------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_build_sub_model_copies_everything_but_the_compressed_ffns(fm_dirs, name):
    fm = load_fm(fm_dirs, name)
    family = family_of(fm.config)
    before = state(fm)
    sub = build_sub_model(fm, [3, 0], RANK)
    fm_state, sub_state = state(fm), state(sub)
    for key, value in before.items():  # the FM itself is not modified
        assert torch.equal(fm_state[key], value), key
    assert not hasattr(fm.config, "ffn_widths")

    fm_layers, sub_layers = encoder_layers(fm, family), encoder_layers(sub, family)
    for i in RETAINED:
        assert sub_layers[i].state_dict().keys() == fm_layers[i].state_dict().keys()
        for key, value in fm_layers[i].state_dict().items():
            assert torch.equal(sub_layers[i].state_dict()[key], value), (i, key)
    for i in COMPRESSED:
        w_in, w_out = tiny.ffn_pair(sub_layers[i], family)
        assert w_in.weight.shape == (RANK, tiny.HIDDEN) and w_out.weight.shape == (tiny.HIDDEN, RANK)
        fm_in, fm_out = tiny.ffn_pair(fm_layers[i], family)
        neurons = select_neurons(family.ffn.saliency(fm_layers[i]), RANK)
        assert torch.equal(w_in.weight, fm_in.weight[neurons]) and torch.equal(w_in.bias, fm_in.bias[neurons])
        assert torch.equal(w_out.weight, fm_out.weight[:, neurons]) and torch.equal(w_out.bias, fm_out.bias)
        ffn_keys = (family.ffn.inputs[0] + ".", family.ffn.output + ".")
        for key, value in fm_layers[i].state_dict().items():  # attention, layer norms
            if not key.startswith(ffn_keys):
                assert torch.equal(sub_layers[i].state_dict()[key], value), (i, key)
    layer_keys = family.layers + "."
    outside = [k for k in fm_state if not k.startswith(layer_keys)]  # embeddings, pooler, final layernorm
    assert any("embeddings" in k for k in outside) and any(k.startswith("pooler.") for k in outside)
    assert sorted(k for k in sub_state if not k.startswith(layer_keys)) == sorted(outside)
    for key in outside:
        assert torch.equal(sub_state[key], fm_state[key]), key

    config = sub.config
    assert config.layers_retained == RETAINED
    assert config.intermediate_rank == RANK and config.qk_rank == tiny.HIDDEN
    assert config.ffn_widths == [tiny.FFN, RANK, RANK, tiny.FFN]
    assert config.layer_map == [0, 1, 2, 3] and config.layer_targets == [0, 1, 2, 3]
    assert config.intermediate_size == tiny.FFN and config.num_hidden_layers == tiny.LAYERS


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_full_rank_sub_model_computes_exactly_the_fm(fm_dirs, name):
    fm = load_fm(fm_dirs, name)
    sub = build_sub_model(fm, [], tiny.FFN).eval()
    inputs = example_inputs(name)
    with torch.no_grad():
        expected, got = fm(**inputs), sub(**inputs)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(got.pooler_output, expected.pooler_output)


# ----------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_save_load_round_trip_bare_and_head_classes(fm_dirs, name, tmp_path):
    sub = build_sub_model(load_fm(fm_dirs, name), RETAINED, RANK).eval()
    save_sub_model(sub, tmp_path / "sub", {"note": "x"})
    info = json.loads((tmp_path / "sub" / "sub_model_info.json").read_text())
    assert info["encoder_layer_parameters"] == encoder_layer_parameters(sub) and info["note"] == "x"
    inputs = example_inputs(name)
    with torch.no_grad():
        expected = sub(**inputs)

    loaded = load_sub_model(tmp_path / "sub").eval()
    assert type(loaded) is type(sub)
    assert loaded.config.ffn_widths == sub.config.ffn_widths
    assert loaded.config.layers_retained == RETAINED and loaded.config.intermediate_rank == RANK
    with torch.no_grad():
        got = loaded(**inputs)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(got.pooler_output, expected.pooler_output)

    headed = load_sub_model(tmp_path / "sub", head_class(name), num_labels=3).eval()
    assert headed.config.num_labels == 3
    base = backbone(headed)
    sub_state = sub.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(value, sub_state[key]), key
    with torch.no_grad():
        backbone_out = base(**inputs).last_hidden_state
        logits = headed(**inputs).logits
    assert torch.equal(backbone_out, expected.last_hidden_state)
    assert logits.shape == (len(next(iter(inputs.values()))), 3)


def _rewrite_weights(folder, edit) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "corruption",
    ["missing_key", "wrong_shape", "unexpected_key", "widths_disagree"],
)
def test_corrupted_sub_model_checkpoint_is_refused(fm_dirs, tmp_path, corruption):
    sub = build_sub_model(load_fm(fm_dirs, "bert"), RETAINED, RANK)
    folder = tmp_path / "sub"
    save_sub_model(sub, folder)
    if corruption == "missing_key":
        _rewrite_weights(folder, lambda w: w.pop("encoder.layer.1.output.dense.bias"))
    elif corruption == "wrong_shape":
        _rewrite_weights(folder, lambda w: w.update({"encoder.layer.2.intermediate.dense.weight": torch.zeros(8, 32)}))
    elif corruption == "unexpected_key":
        _rewrite_weights(folder, lambda w: w.update({"encoder.layer.2.extra.weight": torch.zeros(2)}))
    else:
        config = json.loads((folder / "config.json").read_text())
        config["ffn_widths"] = [tiny.FFN] * tiny.LAYERS
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SubModelError):
        load_sub_model(folder)


def test_plain_fm_folder_and_missing_folder_are_not_sub_models(fm_dirs, tmp_path):
    with pytest.raises(SubModelError, match="plain checkpoint"):
        load_sub_model(fm_dirs["bert"])
    with pytest.raises(SubModelError):
        load_sub_model(tmp_path / "nothing-here")


def test_sub_model_name_follows_the_reference_pattern():
    # spec §2.7
    name = sub_model_name("../pretrain_models/roberta-base/", [0, 11], 768, 768)
    assert name == "sub-roberta-base-retained011-r1768-r2768"


# ----------------------------------------------------------------------------------------------- sizes (§2.8)
FULL_LAYER, COMPRESSED_LAYER_768 = 7_087_872, 3_546_624


@pytest.mark.parametrize(
    "model_class, config_class", [(RobertaModel, RobertaConfig), (BertModel, BertConfig), (ViTModel, ViTConfig)]
)
def test_paper_shape_parameter_counts(model_class, config_class):
    with torch.device("meta"):  # base-size shapes without allocating 400 MB
        fm = model_class(config_class())
        sub = build_sub_model(fm, [0, 11], 768)
        emulator = build_layer_drop_emulator(fm, adapter_bottom=1, adapter_top=1, emulator_layers=5)
    family = family_of(fm.config)
    assert encoder_layer_parameters(fm) == 85_054_464 == 12 * FULL_LAYER
    assert encoder_layer_parameters(sub) == 49_641_984 == 2 * FULL_LAYER + 10 * COMPRESSED_LAYER_768
    assert sum(p.numel() for p in encoder_layers(sub, family)[5].parameters()) == COMPRESSED_LAYER_768
    assert (mebi(encoder_layer_parameters(fm)), mebi(encoder_layer_parameters(sub))) == ("81.1Mi", "47.3Mi")

    # FedOT's emulator: 1 bottom + 5 middle + 1 top full layers = 7 full layers (spec §4.13)
    assert encoder_layer_parameters(emulator) == 49_615_104 == 7 * FULL_LAYER
    config = emulator.config
    assert config.num_hidden_layers == 7 and len(encoder_layers(emulator, family)) == 7
    assert config.layer_map[0] == 0 and config.layer_map[-1] == 11
    assert config.layer_map == sorted(set(config.layer_map))
    assert config.layers_retained == [0, 6]
    # each emulator layer stands in for the FM block ending just before the next kept layer
    assert config.layer_targets == [*(b - 1 for b in config.layer_map[1:]), 11]


# ----------------------------------------------------------------------------------------------- validation
TINY_CONFIG = BertConfig(
    hidden_size=tiny.HIDDEN, num_hidden_layers=tiny.LAYERS, num_attention_heads=tiny.HEADS, intermediate_size=tiny.FFN
)


@pytest.mark.parametrize(
    "layers_retained, intermediate_rank, qk_rank, fragment",
    [
        ([0, 3], 0, tiny.HIDDEN, "--intermediate_rank must be in 1..64"),
        ([0, 3], tiny.FFN + 1, tiny.HIDDEN, "--intermediate_rank must be in 1..64"),
        ([0, 4], RANK, tiny.HIDDEN, "--layers_retained index 4 is out of range"),
        ([-1], RANK, tiny.HIDDEN, "--layers_retained index -1 is out of range"),
        ([0, 0, 3], RANK, tiny.HIDDEN, "--layers_retained has duplicated indices"),
        ([0, 3], RANK, 16, "--qk_rank 16 != hidden size 32"),
    ],
    ids=["rank_zero", "rank_too_big", "layer_out_of_range", "layer_negative", "duplicated", "qk_rank"],
)
def test_validate_construction_rejects_bad_arguments(layers_retained, intermediate_rank, qk_rank, fragment):
    with pytest.raises(SubModelError) as caught:
        validate_construction(TINY_CONFIG, layers_retained, intermediate_rank, qk_rank)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_validate_construction_accepts_the_edges_and_build_checks_too(fm_dirs):
    validate_construction(TINY_CONFIG, [], tiny.FFN, tiny.HIDDEN)
    validate_construction(TINY_CONFIG, [0, 1, 2, 3], 1, tiny.HIDDEN)
    with pytest.raises(SubModelError, match="qk_rank"):
        build_sub_model(load_fm(fm_dirs, "bert"), RETAINED, RANK, qk_rank=8)
