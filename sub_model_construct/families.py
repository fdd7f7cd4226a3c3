"""The one table of model families (spec §2, ARCHITECTURE §3).

Every other module asks this table where a family keeps its layers, its FFN and its attention, using the module
names of the pinned transformers 5.x. Adding a family means adding a row here and a test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from .ffn import FFN
from .modality import CAUSAL_LM, IMAGE, TEXT, Modality


@dataclass(frozen=True)
class Family:
    """Where the parts of one transformer family live (names relative to the bare backbone): an encoder
    (BERT-like, ViT) or a decoder-only causal LM (LLaMA-like)."""

    name: str
    layers: str  # ModuleList of encoder layers, relative to the backbone
    ffn: FFN  # the FFN's input matrices (rows = neurons), output matrix (columns = neurons) and shared norm (ffn.py)
    attention: tuple[str, ...]  # query, key, value, output projections, relative to a layer (LoRA targets)
    # classification head module(s) on the *ForSequence/ImageClassification model; () for a causal LM, whose (tied)
    # lm_head is never trained or shipped
    head: tuple[str, ...]
    modality: Modality  # TEXT or IMAGE (classification tasks), or CAUSAL_LM (decoder-only LMs)
    # dropout applied to the FFN output, relative to a layer (ViT shares it with attention); None where the layer has
    # no dropout module (the decoder LMs)
    ffn_dropout: str | None
    # spec §3.2: substrings that keep a compressed layer's parameter out of the distillation trainable set
    frozen_in_distillation: tuple[str, ...] = ("attention",)
    positions_after_padding: bool = False  # position ids start after the padding index (RoBERTa, MPNet)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}"


_BERT = Family(
    name="bert",
    layers="encoder.layer",
    ffn=FFN(inputs=("intermediate.dense",), output="output.dense", norm="output.LayerNorm"),
    attention=("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    head=("classifier",),
    modality=TEXT,
    ffn_dropout="output.dropout",
)

# Decoder-only causal LMs (LLaMA and the families sharing its module names). Only the gated FFN is cut: its neurons are
# the rows of gate_proj and up_proj and the columns of down_proj; grouped-query attention, the RMSNorms, rotary
# embeddings and the (tied) embeddings are copied whole. No classification head and no FFN dropout module; the two
# RMSNorms of a layer (before attention, before the FFN) stay frozen in distillation, like ViT's LayerNorms.
_LLAMA = Family(
    name="llama",
    layers="layers",
    ffn=FFN(inputs=("mlp.gate_proj", "mlp.up_proj"), output="mlp.down_proj"),
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    head=(),
    modality=CAUSAL_LM,
    ffn_dropout=None,
    frozen_in_distillation=("self_attn", "layernorm"),
)
FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    # same module names; the head differs but is also `classifier`
    "roberta": replace(_BERT, name="roberta", positions_after_padding=True),
    # MPNet: BERT's FFN and head names, its own attention names. Its one relative position bias table
    # (`encoder.relative_attention_bias`) sits on the encoder, outside every layer: it is copied whole into a sub-FM
    # or emulator, never compressed, and not counted in the encoder-layer parameters.
    "mpnet": replace(
        _BERT,
        name="mpnet",
        attention=("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"),
        positions_after_padding=True,
    ),
    "vit": Family(
        name="vit",
        layers="layers",
        ffn=FFN(inputs=("mlp.fc1",), output="mlp.fc2"),
        attention=("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
        head=("classifier",),
        modality=IMAGE,
        ffn_dropout="dropout",
        frozen_in_distillation=("attention", "layernorm"),
    ),
    # DistilBERT: its config names the FFN width `hidden_dim` (read from the modules here, never from the config), and
    # its classification head is two modules (`pre_classifier`, then `classifier`), both trained and communicated
    "distilbert": Family(
        name="distilbert",
        layers="transformer.layer",
        ffn=FFN(inputs=("ffn.lin1",), output="ffn.lin2", norm="output_layer_norm"),
        attention=("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
        head=("pre_classifier", "classifier"),
        modality=TEXT,
        ffn_dropout="ffn.dropout",
    ),
    "llama": _LLAMA,
    # same module names; Qwen2's query/key/value projections carry biases (copied whole, like all of attention)
    "qwen2": replace(_LLAMA, name="qwen2"),
    "mistral": replace(_LLAMA, name="mistral"),
}


class UnsupportedModelError(ValueError):
    """The checkpoint's model_type has no row in FAMILIES."""


def family_of(config_or_type) -> Family:
    """Return the family row for a config (or a model_type string); clear error for anything else."""
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def max_tokens(config) -> int:
    """The longest token sequence a text model's position embeddings cover (a decoder's rotary positions start at 0:
    no padding offset)."""
    positions = config.max_position_embeddings
    if family_of(config).positions_after_padding:
        return positions - (config.pad_token_id or 0) - 1
    return positions


def backbone(model: nn.Module) -> nn.Module:
    """The bare backbone of a model: itself for *Model classes, `.base_model` for heads (e.g. `bert`, `vit`, and a
    causal LM's `model`)."""
    base = getattr(model, "base_model", model)
    # peft wrappers expose base_model too; unwrap to the transformers model first
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
        base = getattr(base, "base_model", base)
    return base


def encoder_layers(model: nn.Module, family: Family) -> nn.ModuleList:
    return backbone(model).get_submodule(family.layers)
