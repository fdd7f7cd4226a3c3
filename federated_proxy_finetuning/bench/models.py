"""The benchmark's models, built from the family table: a random-weight FM of a given shape (the row's config class,
through transformers' auto classes, and the head class of the row's modality), the client model each method trains
(LoRA on the layers it tunes) and one batch of the row's modality."""

from __future__ import annotations

import torch

from federated_proxy_finetuning.adapters import with_lora
from federated_proxy_finetuning.methods import EMULATOR, FM_ITSELF, SUB_FM
from sub_model_construct.families import FAMILIES, Family, encoder_layers, family_of

MODELS = {"fm": "FM (FedPETuning)", "sub": "sub-FM (FedPFT)", "emulator": "emulator (FedOT)"}
# every family row: a classifier (its modality's classification head) or a decoder LM (its own LM head)
BENCH_FAMILIES = sorted(FAMILIES)


def head_name(family: Family) -> str:
    """The transformers auto class of the row's modality with its head (a classifier's, or a causal LM's)."""
    from federated_proxy_finetuning.modality import BY_NAME

    return BY_NAME[family.modality.name].head


def head_class(name: str):
    import transformers

    return getattr(transformers, name)


def key_width(model, family: Family) -> int:
    """The key projection's outputs: the hidden size, or less under grouped-query attention."""
    return encoder_layers(model, family)[0].get_submodule(family.attention[1]).out_features


def vocab_of(config) -> int:
    """The token ids a text FM embeds (1000 stands for none: an image FM takes no ids)."""
    return getattr(config, "vocab_size", None) or 1000


def random_fm(
    family: Family,
    layers: int,
    hidden: int,
    ffn: int,
    heads: int,
    num_labels: int,
    image_size: int,
    kv_heads: int | None = None,
    vocab: int | None = None,
):
    """An FM of the row's config class and this shape with random weights (`kv_heads` key/value heads, a `vocab`
    of token ids; None: the config's default); refuses a config that ignores a shape."""
    from transformers import AutoConfig

    shape = dict(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads)
    shape.update(family.modality.config_shape(image_size, num_labels))
    if kv_heads not in (None, heads):
        shape["num_key_value_heads"] = kv_heads
    if vocab is not None:
        shape["vocab_size"] = vocab
    config = AutoConfig.for_model(family.name, **shape)
    model = head_class(head_name(family)).from_config(config)
    blocks = encoder_layers(model, family)
    built = (len(blocks), family.ffn.width(blocks[0]), key_width(model, family))
    asked = (layers, ffn, hidden * (kv_heads or heads) // heads)
    if built != asked:
        raise ValueError(
            f"the {family.name} config does not take this shape ({built[0]} layers of FFN width {built[1]} and key "
            f"width {built[2]} built, {asked[0]} of {asked[1]} and {asked[2]} asked): no random-weight benchmark "
            "model for it"
        )
    return model


def pretrained_fm(path, num_labels: int = 2):
    """(FM, its family row) read from a model folder with the head class of its family's modality."""
    from transformers import AutoConfig

    family = family_of(AutoConfig.from_pretrained(path))
    return head_class(head_name(family)).from_pretrained(path, **family.modality.head_labels(num_labels)), family


def emulator_middle_layers(layers: int, middle: int | None = None) -> int:
    """The emulator's middle layers: `middle` when given, else half of the FM's middle layers (at least one)."""
    if middle is None:
        return max(1, (layers - 2) // 2)
    if not 1 <= middle <= layers - 2:
        raise ValueError(f"--emulator_middle must lie in [1, {layers - 2}] (the FM's middle layers), got {middle}")
    return middle


# the benchmark's model keys and the client model each one is (its tuned layers: methods.ClientModel)
CLIENT_MODELS = {"fm": FM_ITSELF, "sub": SUB_FM, "emulator": EMULATOR}


def client_model(key: str, model, family: Family, lora_rank: int):
    """LoRA on the layers the method's clients tune: every layer (FedPFT, FedPETuning), FedOT's adapters."""
    return with_lora(model, family, CLIENT_MODELS[key].tuned_layers(model.config), lora_rank, 2 * lora_rank)


def batch_for(
    family: Family, batch: int, seq: int, image_size: int, num_labels: int, device: str = "cpu", vocab: int = 1000
):
    """One random batch of the row's modality with its labels (a class per example, or a causal LM's next tokens)."""
    out = family.modality.random_batch(batch, seq, image_size, num_labels, torch.Generator().manual_seed(0), vocab)
    return {k: v.to(device) for k, v in out.items()}
