"""What travels between the Flower ServerApp (flower_app.py) and ClientApp (flower_client.py): the run
configuration, the client model shipped once, the sub-FM FFN changes (the updated neurons' slices and the shared
tensors of each touched layer, under short names: `<layer>.in|out|norm.<param>`), and tensors as Flower records."""

from __future__ import annotations

import json
import shlex

import torch

from sub_model_construct.families import backbone, encoder_layers, family_of

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Flower is not installed: pip install -e '.[flower]' (flwr 1.42.0)") from exc

__all__ = ["ArrayRecord", "ConfigRecord", "Context", "Message", "MetricRecord", "RecordDict"]
HELLO, INSTALL = "hello", "install"


# ----------------------------------------------------------------------------------------------- settings
def run_settings(context: Context):
    """(FedSettings, Modality, round timeout, connect timeout) from the run configuration."""
    from .fedtune import check_flags
    from .modality import MODALITIES

    config = context.run_config
    modality = str(config.get("modality", "text"))
    if modality not in MODALITIES:
        raise ValueError(f"run config modality={modality!r}: choose from {sorted(MODALITIES)}")
    settings = check_flags(shlex.split(str(config.get("fedtune-args", ""))), modality)
    round_timeout = float(config.get("round-timeout", 0)) or None
    return settings, MODALITIES[modality], round_timeout, float(config.get("connect-timeout", 600))


def wire_bytes(message: Message) -> int:
    """Serialised size of a message: every object of its tree as Flower deflates it for the wire."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


# ----------------------------------------------------------------------------------------------- payloads
def client_model_payload(client_model) -> RecordDict:
    """The client model as a client must first receive it: config and weights except LoRA and head."""
    base = client_model.get_base_model() if hasattr(client_model, "get_base_model") else client_model
    state = {}
    for name, tensor in backbone(base).state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().cpu().contiguous()
    config = ConfigRecord({"action": INSTALL, "config": json.dumps(base.config.to_dict())})
    return RecordDict({"config": config, "client_model": record_of(state)})


def _wire_names(ffn) -> dict[str, str]:
    """Short payload names of an FFN's modules: `in` (`in0`, `in1`, ... for several inputs), `out`, `norm`."""
    names = {name: "in" if len(ffn.inputs) == 1 else f"in{k}" for k, name in enumerate(ffn.inputs)}
    return names | {ffn.output: "out"} | ({ffn.norm: "norm"} if ffn.norm else {})


def _wire_key(layer: int, tensor: str, names: dict[str, str]) -> str:
    module, _, param = tensor.rpartition(".")
    return f"{layer}.{names[module]}.{param}"


def ffn_changes(client_model, changes: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values of the sub-FM parameters listed in `changes` ({layer: neurons}): the neurons' slices of the FFN's
    input and output matrices, plus each touched layer's shared output bias and post-FFN norm (ffn.FFN)."""
    family = family_of(backbone(client_model).config)
    blocks, names = encoder_layers(client_model, family), _wire_names(family.ffn)
    out = {}
    for layer, neurons in changes.items():
        out[f"{layer}.neurons"] = neurons.to(torch.int64)
        for tensor, value in family.ffn.neuron_state(blocks[layer], neurons).items():
            out[_wire_key(layer, tensor, names)] = value
    return out


@torch.no_grad()
def apply_ffn_changes(client_model, state: dict[str, torch.Tensor]) -> None:
    family = family_of(backbone(client_model).config)
    blocks, names = encoder_layers(client_model, family), _wire_names(family.ffn)
    layers = sorted({int(k.split(".", 1)[0]) for k in state})
    for layer in layers:
        neurons = state[f"{layer}.neurons"].long()
        tensors = [s.name for s in family.ffn.neuron_slices(blocks[layer])]
        tensors += [name for name, _ in family.ffn.shared(blocks[layer])]
        values = {tensor: state[_wire_key(layer, tensor, names)] for tensor in tensors}
        family.ffn.load_neuron_state(blocks[layer], neurons, values)


def state_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def record_of(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
