"""Decoder-only causal LMs (LLaMA, Qwen2, Mistral) as family rows: the rows resolve on stock models, a sub-FM cuts
the gated FFNs of the compressed layers to the neurons of the largest saliency (weight rule, or activation-aware)
and leaves everything else alone, it survives a save/load round trip, and one layer-level distillation step runs.
All on tiny configs built here (hidden 32, 4 layers, FFN 64, 4 heads, 2 KV heads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from sub_model_construct import distill
from sub_model_construct.cli import UsageError
from sub_model_construct.distill_model import LayerKD, distillation_parameters, prepare_for_distillation
from sub_model_construct.families import FAMILIES, backbone, encoder_layers, family_of, max_tokens
from sub_model_construct.modality import CAUSAL_LM, TEXT
from sub_model_construct.sub_model import SubModelError, activation_saliency, build_sub_model, fm_ffn_width
from sub_model_construct.sub_model_io import load_sub_model, save_sub_model

HIDDEN, LAYERS, FFN, HEADS, KV_HEADS, VOCAB, KEEP = 32, 4, 64, 4, 2, 100, 16
CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
NAMES = sorted(CONFIGS)
CUT = (1, 2)  # build_sub_model(fm, [0, 3], KEEP) cuts these


def tiny_config(name: str):
    return CONFIGS[name](
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        intermediate_size=FFN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )


def causal_lm(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(name)).eval()


def token_blocks(n: int = 2, length: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def weight_rule_neurons(layer: nn.Module) -> torch.Tensor:
    """The KEEP neurons of the largest ||[W_gate[j,:], W_up[j,:], W_down[:,j]]||_2, ascending."""
    mlp = layer.mlp
    norms = (
        mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1) + mlp.down_proj.weight.pow(2).sum(0)
    ).sqrt()
    return norms.argsort(descending=True)[:KEEP].sort().values


def mlp_inputs(model: nn.Module, ids, layers) -> dict[int, torch.Tensor]:
    """The input of each layer's MLP (after the pre-FFN RMSNorm) on `ids`."""
    seen, handles = {}, []
    for i in layers:
        block = encoder_layers(model, FAMILIES["llama"])[i]
        handles.append(block.mlp.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, args[0])))
    with torch.no_grad():
        backbone(model)(**ids) if isinstance(ids, dict) else backbone(model)(input_ids=ids)
    for handle in handles:
        handle.remove()
    return seen


def gated_hidden(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)


# ----------------------------------------------------------------------------------------------- rows
@pytest.mark.parametrize("name", NAMES)
def test_rows_resolve_on_stock_causal_lms(name):
    model = causal_lm(name)
    family = family_of(model.config)
    assert family is FAMILIES[name] and family.modality is CAUSAL_LM and family.modality.command_line is TEXT
    assert family.head == () and family.ffn_dropout is None
    layers = encoder_layers(model, family)
    assert isinstance(layers, nn.ModuleList) and len(layers) == LAYERS
    for layer in layers:
        assert family.ffn.width(layer) == FFN
        assert [linear.out_features for linear in family.ffn.input_linears(layer)] == [FFN, FFN]
        q, k, v, o = (layer.get_submodule(path) for path in family.attention)
        assert (q.out_features, k.out_features, v.out_features, o.in_features) == (32, 16, 16, 32)  # 2 KV heads
        assert (q.bias is not None) == (name == "qwen2")
    assert fm_ffn_width(model.config) == FFN
    assert max_tokens(model.config) == 64  # rotary positions: no padding offset
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, and not a head of the family


# ----------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("name", NAMES)
def test_sub_model_cuts_the_gated_ffns_to_the_most_salient_neurons(name):
    fm = backbone(causal_lm(name))
    family = family_of(fm.config)
    sub = build_sub_model(fm, [0, 3], KEEP)
    fm_layers, sub_layers = encoder_layers(fm, family), encoder_layers(sub, family)
    assert sub.config.ffn_widths == [FFN, KEEP, KEEP, FFN]
    for i in (0, 3):
        for key, value in fm_layers[i].state_dict().items():
            assert torch.equal(sub_layers[i].state_dict()[key], value), (i, key)
    x = torch.randn(5, HIDDEN)
    for i in CUT:
        keep = weight_rule_neurons(fm_layers[i])
        full, cut = fm_layers[i].mlp, sub_layers[i].mlp
        assert torch.equal(cut.gate_proj.weight, full.gate_proj.weight[keep])
        assert torch.equal(cut.up_proj.weight, full.up_proj.weight[keep])
        assert torch.equal(cut.down_proj.weight, full.down_proj.weight[:, keep])
        with torch.no_grad():  # the kept neurons' contribution, by hand from the full MLP
            expected = gated_hidden(full, x)[:, keep] @ full.down_proj.weight[:, keep].T
            assert torch.allclose(cut(x), expected, atol=1e-6)
    # attention (with its GQA shapes and Qwen2's biases), RMSNorms, embeddings, final norm, rotary buffers: untouched
    fm_state, sub_state = fm.state_dict(), sub.state_dict()
    outside = [k for k in fm_state if not any(k.startswith(f"layers.{i}.mlp.") for i in CUT)]
    assert any("self_attn.k_proj" in k for k in outside) and "embed_tokens.weight" in outside
    for key in outside:
        assert torch.equal(sub_state[key], fm_state[key]), key
    assert {k for k in sub_state if k not in outside} == {
        f"layers.{i}.mlp.{m}.weight" for i in CUT for m in ("gate_proj", "up_proj", "down_proj")
    }


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(tmp_path, name):
    fm = backbone(causal_lm(name))
    sub = build_sub_model(fm, [0, 3], KEEP)
    save_sub_model(sub, tmp_path / "sub")
    loaded = load_sub_model(tmp_path / "sub").eval()
    assert loaded.config.ffn_widths == [FFN, KEEP, KEEP, FFN]
    for key, value in sub.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = token_blocks()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).last_hidden_state, sub(input_ids=ids).last_hidden_state)
    lm = load_sub_model(tmp_path / "sub", AutoModelForCausalLM)  # the LM head comes back tied to the embeddings
    assert torch.equal(lm.lm_head.weight, sub.embed_tokens.weight)


def test_an_emulator_built_in_memory_runs_with_a_kv_cache():
    """Kept layers take their new positions: the emulator's last layer (FM layer 3 of 3 kept) indexes the KV cache
    at 2, as the same emulator saved and loaded does."""
    from sub_model_construct.emulator import build_layer_drop_emulator

    emulator = build_layer_drop_emulator(causal_lm("llama"), 1, 1, 1)
    assert [layer.self_attn.layer_idx for layer in encoder_layers(emulator, FAMILIES["llama"])] == [0, 1, 2]
    with torch.no_grad():
        out = emulator(input_ids=token_blocks(), use_cache=True)
    assert out.logits.shape == (2, 8, VOCAB)


# ----------------------------------------------------------------------------------------------- saliency
@pytest.mark.parametrize("name", NAMES)
def test_activation_saliency_by_hand(name):
    model = causal_lm(name)
    family = family_of(model.config)
    ids = token_blocks(n=3, length=7)
    saliency = activation_saliency(model, [ids[:2], ids[2:]])
    assert sorted(saliency) == list(range(LAYERS))
    inputs = mlp_inputs(model, ids, range(LAYERS))
    for i, layer in enumerate(encoder_layers(model, family)):
        h = gated_hidden(layer.mlp, inputs[i]).reshape(-1, FFN).double()
        by_hand = layer.mlp.down_proj.weight.detach().double().norm(dim=0) * h.pow(2).mean(0).sqrt()
        assert torch.allclose(saliency[i].double(), by_hand, rtol=1e-5, atol=1e-9)
    # padded positions (attention_mask 0) are left out of the mean
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    masked = activation_saliency(model, [{"input_ids": ids, "attention_mask": mask}], layers=[1])
    x = mlp_inputs(model, {"input_ids": ids, "attention_mask": mask}, [1])[1]
    layer = encoder_layers(model, family)[1]
    h = gated_hidden(layer.mlp, x)[mask.bool()].double()
    by_hand = layer.mlp.down_proj.weight.detach().double().norm(dim=0) * h.pow(2).mean(0).sqrt()
    assert list(masked) == [1] and torch.allclose(masked[1].double(), by_hand, rtol=1e-5, atol=1e-9)


def test_build_sub_model_ranks_by_a_given_saliency():
    fm = backbone(causal_lm("llama"))
    family = family_of(fm.config)
    saliency = activation_saliency(fm, [token_blocks()], layers=CUT)
    sub = build_sub_model(fm, [0, 3], KEEP, saliency=saliency)
    for i in CUT:
        keep = saliency[i].argsort(descending=True)[:KEEP].sort().values
        full = encoder_layers(fm, family)[i].mlp
        assert torch.equal(encoder_layers(sub, family)[i].mlp.down_proj.weight, full.down_proj.weight[:, keep])
    with pytest.raises(SubModelError, match="compressed layer 2"):
        build_sub_model(fm, [0, 3], KEEP, saliency={1: saliency[1]})
    with pytest.raises(SubModelError, match="shape"):
        build_sub_model(fm, [0, 3], KEEP, saliency={1: saliency[1], 2: saliency[2][:10]})


# ----------------------------------------------------------------------------------------------- distillation
@pytest.mark.parametrize("name", NAMES)
def test_one_layer_level_distillation_step(name):
    fm = backbone(causal_lm(name))
    sub = build_sub_model(fm, [0, 3], KEEP)
    named = distillation_parameters(sub, CUT)
    assert named and all(".mlp." in n for n, _ in named)  # attention and both RMSNorms stay frozen
    prepare_for_distillation(fm, sub, [p for _, p in named], dropout_layers=CUT)  # no dropout module: nothing to do
    kd = LayerKD(fm, sub, [(i, i) for i in CUT], alpha=0.0)
    loss, parts = kd({"input_ids": token_blocks(n=3, length=8), "attention_mask": torch.ones(3, 8, dtype=torch.long)})
    assert torch.isfinite(loss) and loss.item() > 0 and parts["hidden_loss"] == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in named)
    assert all(p.grad is None for n, p in sub.named_parameters() if "self_attn" in n)


def test_distill_command_line_accepts_a_causal_lm_on_the_text_corpus(tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    argv = ["--model_checkpoint", str(tmp_path), "--layers_retained", "0", "3", "--intermediate_rank", str(KEEP)]
    text = [*argv, "--block_size", "64", "--distill", "True"]
    _, plan = distill.check_flags([*text, "--distill_alpha", "0"], "text")
    assert plan.config.model_type == "llama"
    with pytest.raises(UsageError, match="distill_alpha 0"):  # the weight term needs one FFN input matrix
        distill.check_flags(text, "text")
    with pytest.raises(UsageError, match="use distill.py"):
        distill.check_flags(argv, "image")


def test_a_causal_lm_runs_on_the_text_command_line_with_its_own_modality():
    from types import SimpleNamespace

    from federated_proxy_finetuning.modality import CAUSAL_LM, MODALITIES
    from federated_proxy_finetuning.models import fm_family

    s = SimpleNamespace(model_checkpoint="tiny-llama")
    family, modality = fm_family(s, MODALITIES["text"], tiny_config("llama"))
    assert family.name == "llama" and modality is CAUSAL_LM and modality.head == "AutoModelForCausalLM"
    with pytest.raises(UsageError, match="causal LM model .*use fedtune.py"):
        fm_family(s, MODALITIES["image"], tiny_config("llama"))
    model = causal_lm("llama")
    assert model.config.use_cache
    modality.prepare(model)  # training and scoring never decode: no key/value cache is built
    assert model.config.use_cache is False


def test_a_gated_ffn_counts_activations_below_the_threshold_as_inactive():
    from federated_proxy_finetuning.align import GATED_THRESHOLD, ZeroActivationCounter, activation_threshold

    assert activation_threshold(None, FAMILIES["llama"]) == GATED_THRESHOLD
    assert activation_threshold(None, FAMILIES["bert"]) == 0.0  # the paper's exact-zero rule
    assert activation_threshold(0.3, FAMILIES["llama"]) == 0.3
    model = causal_lm("llama")
    layers = list(model.model.layers)
    seen = {}
    handles = [layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda _m, inputs, i=i: seen.__setitem__(i, inputs[0].detach().clone())) for i in CUT]  # fmt: skip
    threshold = 0.005  # about the median magnitude of this tiny model's activations
    counter = ZeroActivationCounter(model, CUT, threshold)
    with torch.no_grad():
        model(input_ids=token_blocks(n=3, length=8))
    stats = counter.remove()
    for handle in handles:
        handle.remove()
    for i in CUT:
        h = seen[i].reshape(-1, FFN)
        assert stats["positions"][i] == 24
        assert torch.equal(stats["zero_counts"][i], (h.abs() < threshold).sum(0))
        assert 0 < stats["zero_counts"][i].sum() < h.numel()  # SiLU gating: some inactive, never all
        assert (h == 0).sum() == 0  # and no exact zero, which is why the threshold exists


def test_distill_ranks_neurons_by_their_activations_on_the_public_corpus(tmp_path):
    """--saliency activation: the sub-FM keeps the neurons activation_saliency ranks highest over the first
    --saliency_blocks training items of the public corpus, in a folder named -act."""
    from accelerate import Accelerator
    from transformers import BertTokenizerFast

    from sub_model_construct import distillation
    from sub_model_construct.train_loop import fetch
    from tests import tiny

    folder = tmp_path / "llama"
    folder.mkdir()
    tokenizer = BertTokenizerFast(vocab=str(tiny.write_vocab(folder)), do_lower_case=True)
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    fm = AutoModelForCausalLM.from_config(config).eval()
    fm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus = tiny.write_text_corpus(tmp_path / "corpus.txt")
    argv = ["--model_checkpoint", str(folder), "--layers_retained", "0", "3", "--intermediate_rank", str(KEEP)]
    argv += ["--saliency", "activation", "--saliency_blocks", "4", "--per_device_eval_batch_size", "2"]
    argv += ["--dataset1_path", str(corpus), "--dataset2_path", "", "--block_size", "16"]
    argv += ["--sub_model_dir", str(tmp_path / "sub"), "--cpu", "True"]
    assert distill.main(argv, "text") == 0
    (built,) = (tmp_path / "sub").glob("sub-llama-*-act")
    s, plan = distill.check_flags(argv, "text")
    _, data, collate = distillation.split_corpus(
        s, TEXT, TEXT.load_corpus(s, plan.config), plan.config, Accelerator(cpu=True)
    )
    scores = activation_saliency(fm.model, [collate(fetch(data, range(b, b + 2))) for b in (0, 2)], CUT)
    expected = build_sub_model(fm.model, [0, 3], KEEP, saliency=scores).state_dict()
    by_weight = build_sub_model(fm.model, [0, 3], KEEP).state_dict()
    got = load_sub_model(built).state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert any(not torch.equal(got[k], v) for k, v in by_weight.items())  # not the weight rule's choice
    with pytest.raises(UsageError, match="emulator_layers"):
        distill.check_flags([*argv[:2], "--emulator_layers", "2", "--saliency", "activation"], "text")
