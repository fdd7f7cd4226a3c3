"""What travels between the Flower ServerApp (flower_app.py) and ClientApp (flower_client.py): the run
configuration, the client model shipped once, and tensors as Flower records (the round's payload, including the
sub-FM FFN changes, is communication.RoundPayload)."""

from __future__ import annotations

import json
import shlex

import torch

from sub_model_construct.families import backbone

from .models import untied_output_projection

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
    """The client model as a client must first receive it: config and weights except LoRA and head, and a causal
    LM's output projection where it is not tied to the input embeddings (the FM's, which the client lacks)."""
    base = client_model.get_base_model() if hasattr(client_model, "get_base_model") else client_model
    state = {}
    for name, tensor in backbone(base).state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().cpu().contiguous()
    config = ConfigRecord({"action": INSTALL, "config": json.dumps(base.config.to_dict())})
    records = {"config": config, "client_model": record_of(state)}
    output = untied_output_projection(base)
    if output is not None:
        records["output_projection"] = record_of({"weight": output.weight})
    return RecordDict(records)


def state_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def record_of(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
