"""The benchmark's models, built from the family table: a random-weight FM of a given shape (the row's config class,
through transformers' auto classes, and the head class of the row's modality), the client model each method trains
(LoRA on the layers it tunes) and one batch of the row's modality."""

from __future__ import annotations

import torch

from federated_proxy_finetuning.adapters import with_lora
from federated_proxy_finetuning.methods import EMULATOR, FM_ITSELF, SUB_FM
from sub_model_construct.families import FAMILIES, Family, encoder_layers, family_of

MODELS = {"fm": "FM (FedPETuning)", "sub": "sub-FM (FedPFT)", "emulator": "emulator (FedOT)"}
# the families a classification benchmark can build: those with a classification head (the decoder LMs have none)
BENCH_FAMILIES = sorted(name for name, row in FAMILIES.items() if row.head)


def head_name(family: Family) -> str:
    """The transformers auto class of the row's modality with its classification head."""
    from federated_proxy_finetuning.modality import MODALITIES

    return MODALITIES[family.modality.name].head


def head_class(name: str):
    import transformers

    return getattr(transformers, name)


def random_fm(family: Family, layers: int, hidden: int, ffn: int, heads: int, num_labels: int, image_size: int):
    """An FM of the row's config class and this shape with random weights; refuses a config that ignores a shape."""
    from transformers import AutoConfig

    shape = dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_labels=num_labels,
        **family.modality.config_shape(image_size),
    )
    config = AutoConfig.for_model(family.name, **shape)
    model = head_class(head_name(family)).from_config(config)
    blocks = encoder_layers(model, family)
    if len(blocks) != layers or family.ffn.width(blocks[0]) != ffn:
        raise ValueError(
            f"the {family.name} config does not take this shape ({len(blocks)} layers of FFN width "
            f"{family.ffn.width(blocks[0])} built, {layers} of {ffn} asked): no random-weight benchmark model for it"
        )
    return model


def pretrained_fm(path, num_labels: int = 2):
    """(FM, its family row) read from a model folder with the head class of its family's modality."""
    from transformers import AutoConfig

    family = family_of(AutoConfig.from_pretrained(path))
    return head_class(head_name(family)).from_pretrained(path, num_labels=num_labels), family


def emulator_middle_layers(layers: int) -> int:
    return max(1, (layers - 2) // 2)


# the benchmark's model keys and the client model each one is (its tuned layers: methods.ClientModel)
CLIENT_MODELS = {"fm": FM_ITSELF, "sub": SUB_FM, "emulator": EMULATOR}


def client_model(key: str, model, family: Family, lora_rank: int):
    """LoRA on the layers the method's clients tune: every layer (FedPFT, FedPETuning), FedOT's adapters."""
    return with_lora(model, family, CLIENT_MODELS[key].tuned_layers(model.config), lora_rank, 2 * lora_rank)


def batch_for(family: Family, batch: int, seq: int, image_size: int, num_labels: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_labels, (batch,), generator=gen)
    out = {**family.modality.random_inputs(batch, seq, image_size, gen), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}
