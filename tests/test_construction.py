"""Sub-FM construction (spec §2): family table, saliency, slicing, save/load, parameter counts."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    GPT2Config,
    RobertaConfig,
    RobertaModel,
)

from sub_model_construct.families import FAMILIES, UnsupportedModelError, encoder_layers, family_of, ffn_linears
from sub_model_construct.sub_model import (
    SubModelError,
    build_layer_drop_emulator,
    build_sub_model,
    encoder_layer_parameters,
    load_sub_model,
    neuron_saliency,
    save_sub_model,
    select_neurons,
    slice_ffn,
    sub_model_name,
    validate_construction,
)
from tests import tiny

FAMILY_NAMES = ["bert", "roberta", "vit"]


@pytest.fixture(params=FAMILY_NAMES)
def fm_dir(request, tmp_path):
    return tiny.make_fm(tmp_path / request.param, request.param)


def inputs(family: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 1, 8, 8, generator=gen)}
    ids = torch.randint(5, 60, (2, 9), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def head_class(family: str):
    return AutoModelForImageClassification if family == "vit" else AutoModelForSequenceClassification


def test_family_paths_resolve(fm_dir):
    fm = AutoModel.from_pretrained(fm_dir)
    family = family_of(fm.config)
    layer = encoder_layers(fm, family)[0]
    for path in (family.ffn_in, family.ffn_out, family.ffn_dropout, *family.attention):
        assert isinstance(layer.get_submodule(path), torch.nn.Module)
    if family.ffn_out_norm:
        assert isinstance(layer.get_submodule(family.ffn_out_norm), torch.nn.LayerNorm)
    with_head = head_class(family.name).from_pretrained(fm_dir, num_labels=3)
    assert isinstance(with_head.get_submodule(family.head), torch.nn.Module)


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match="bert, roberta, vit"):
        family_of(GPT2Config())


def test_saliency_picks_the_largest_norm_neurons_in_original_order():
    d, n = 4, 6
    w_in = torch.zeros(n, d)
    w_out = torch.zeros(d, n)
    norms = [1.0, 5.0, 2.0, 4.0, 0.5, 3.0]  # neuron j's norm spread over its input row and output column
    for j, s in enumerate(norms):
        w_in[j, 0] = s * 0.6
        w_out[1, j] = s * 0.8
    saliency = neuron_saliency(w_in, w_out)
    assert torch.allclose(saliency, torch.tensor(norms))
    assert select_neurons(saliency, 3).tolist() == [1, 3, 5]


def test_slice_ffn_copies_rows_columns_and_whole_output_bias(tmp_path):
    fm = AutoModel.from_pretrained(tiny.make_fm(tmp_path / "b", "bert"))
    family = FAMILIES["bert"]
    layer = encoder_layers(fm, family)[1]
    w_in, w_out = (m.weight.clone() for m in ffn_linears(layer, family))
    b_in, b_out = (m.bias.clone() for m in ffn_linears(layer, family))
    keep = torch.tensor([2, 7, 40])
    slice_ffn(layer, family, keep)
    new_in, new_out = ffn_linears(layer, family)
    assert torch.equal(new_in.weight, w_in[keep]) and torch.equal(new_in.bias, b_in[keep])
    assert torch.equal(new_out.weight, w_out[:, keep]) and torch.equal(new_out.bias, b_out)


def test_build_keeps_retained_layers_and_everything_but_compressed_ffns(fm_dir):
    fm = AutoModel.from_pretrained(fm_dir).eval()
    family = family_of(fm.config)
    sub = build_sub_model(fm, [0, 3], 16)
    assert sub.config.ffn_widths == [tiny.FFN, 16, 16, tiny.FFN]
    assert (sub.config.layers_retained, sub.config.intermediate_rank, sub.config.qk_rank) == ([0, 3], 16, tiny.HIDDEN)
    assert sub.config.layer_map == sub.config.layer_targets == [0, 1, 2, 3]
    fm_params = dict(fm.named_parameters())
    for name, p in sub.named_parameters():
        compressed_ffn = any(
            f"{family.layers}.{i}.{part}" in name for i in (1, 2) for part in (family.ffn_in, family.ffn_out)
        )
        if compressed_ffn and not name.endswith(f"{family.ffn_out}.bias"):
            assert p.shape != fm_params[name].shape
        else:
            assert torch.equal(p, fm_params[name]), name


def test_full_rank_sub_model_is_the_fm(fm_dir):
    fm = AutoModel.from_pretrained(fm_dir).eval()
    sub = build_sub_model(fm, [], tiny.FFN).eval()
    x = inputs(family_of(fm.config).name)
    assert torch.equal(fm(**x).last_hidden_state, sub(**x).last_hidden_state)


def test_save_load_round_trip(fm_dir, tmp_path):
    fm = AutoModel.from_pretrained(fm_dir).eval()
    name = family_of(fm.config).name
    sub = build_sub_model(fm, [0], 16).eval()
    save_sub_model(sub, tmp_path / "sub")
    loaded = load_sub_model(tmp_path / "sub").eval()
    x = inputs(name)
    assert torch.equal(loaded(**x).last_hidden_state, sub(**x).last_hidden_state)
    headed = load_sub_model(tmp_path / "sub", head_class(name), num_labels=3).eval()
    assert headed.config.num_labels == 3 and headed.config.ffn_widths == sub.config.ffn_widths
    hidden = headed.base_model(**x).last_hidden_state
    assert torch.equal(hidden, sub(**x).last_hidden_state)


def test_corrupted_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    fm = AutoModel.from_pretrained(tiny.make_fm(tmp_path / "fm", "bert"))
    save_sub_model(build_sub_model(fm, [0], 16), tmp_path / "sub")
    weights = tmp_path / "sub" / "model.safetensors"
    state = load_file(str(weights))
    state.pop("encoder.layer.1.intermediate.dense.bias")
    save_file(state, str(weights))
    with pytest.raises(SubModelError, match="missing"):
        load_sub_model(tmp_path / "sub")
    state["encoder.layer.1.intermediate.dense.bias"] = torch.zeros(99)
    save_file(state, str(weights))
    with pytest.raises(SubModelError, match="shape"):
        load_sub_model(tmp_path / "sub")
    with pytest.raises(SubModelError, match="not a sub-FM"):
        load_sub_model(tmp_path / "fm")


def test_paper_shape_parameter_counts():
    # spec §2.8: RoBERTa-base, layers 0 and 11 whole, FFN 3072 -> 768: 81.1 Mi vs 47.3 Mi ("81M / 47M")
    fm = RobertaModel(RobertaConfig(), add_pooling_layer=False)
    assert encoder_layer_parameters(fm) == 85_054_464
    assert encoder_layer_parameters(build_sub_model(fm, [0, 11], 768)) == 49_641_984
    emulator = build_layer_drop_emulator(fm, 1, 1, 5)  # FedOT: 7 full layers, the same budget
    assert emulator.config.layer_map == [0, 1, 3, 5, 7, 9, 11]
    assert emulator.config.layer_targets == [0, 2, 4, 6, 8, 10, 11]
    assert encoder_layer_parameters(emulator) == 7 * 7_087_872 == 49_615_104


@pytest.mark.parametrize(
    ("retained", "rank", "qk", "message"),
    [
        ([], 0, None, "intermediate_rank"),
        ([], tiny.FFN + 1, None, "intermediate_rank"),
        ([4], 16, None, "out of range"),
        ([1, 1], 16, None, "duplicated"),
        ([], 16, 16, "attention compression is not supported"),
    ],
)
def test_construction_arguments_are_validated(tmp_path, retained, rank, qk, message):
    fm = AutoModel.from_pretrained(tiny.make_fm(tmp_path / "fm", "bert"))
    with pytest.raises(SubModelError, match=message):
        validate_construction(fm.config, retained, rank, tiny.HIDDEN if qk is None else qk)


def test_folder_name_follows_the_reference():
    name = sub_model_name("../pretrain_models/roberta-base/", [0, 11], 768, 768)
    assert name == "sub-roberta-base-retained011-r1768-r2768"
