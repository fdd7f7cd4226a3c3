"""Save/load of sub-FM checkpoints as ordinary transformers folders (spec §2.7).

A sub-FM's config records the per-layer FFN widths (`ffn_widths`), so loading rebuilds the stock model from the
config, shrinks it to those widths and loads the weights strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from . import reads
from .families import backbone, encoder_layers, family_of
from .sub_model import SubModelError, encoder_layer_parameters


def is_sub_model_config(config: PretrainedConfig) -> bool:
    return all(hasattr(config, key) for key in ("ffn_widths", "layer_map"))


def save_sub_model(model: PreTrainedModel, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save the bare backbone (with pooler where the family has one) as a transformers folder + parameter counts."""
    path = Path(path)
    base = backbone(model)
    path.mkdir(parents=True, exist_ok=True)
    base.config.architectures = [type(base).__name__]
    base.config.save_pretrained(path)
    # Written directly (not save_pretrained): transformers 5 renames some families' keys to legacy names on save,
    # and a sub-FM is read back only by load_sub_model, which expects the live module names.
    state = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    counts = {"encoder_layer_parameters": encoder_layer_parameters(base), **(extra or {})}
    (path / "sub_model_info.json").write_text(json.dumps(counts, indent=2) + "\n")


def load_sub_model(
    path: str | os.PathLike, model_class=AutoModel, torch_dtype: torch.dtype | None = None, **config_kwargs
) -> PreTrainedModel:
    """Load a sub-FM folder into `model_class` (AutoModel, AutoModelForSequenceClassification, ...).

    The stock model is built from the config, its FFNs are shrunk to the recorded widths and the checkpoint is loaded
    strictly into the backbone. The only tolerated difference is a pooler that the chosen head class does not build
    (e.g. RobertaForSequenceClassification, spec §2.7); a head (classifier) is newly initialised, as with
    `from_pretrained` on a bare checkpoint.
    """
    path = Path(path)
    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise SubModelError(f"{path} is not a sub-FM folder (needs config.json and model.safetensors)")
    with reads.reading(path / "config.json", "sub-FM config"):
        config = AutoConfig.from_pretrained(path, **config_kwargs)
    if not is_sub_model_config(config):
        raise SubModelError(f"{path} is a plain checkpoint, not a sub-FM (its config has no ffn_widths/layer_map)")
    model = sub_model_from_config(config, model_class, source=str(path))
    with reads.reading(weights, "weights file"):
        state = load_file(str(weights))
    load_backbone_state(backbone(model), state, source=str(path))
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model


def sub_model_from_config(config, model_class=AutoModel, source: str = "config") -> PreTrainedModel:
    """The stock model of a sub-FM config with its FFNs shrunk to the recorded widths (weights uninitialised)."""
    family = family_of(config)
    model = model_class.from_config(config)
    layers = encoder_layers(model, family)
    if len(layers) != len(config.ffn_widths):
        raise SubModelError(f"{source}: config lists {len(config.ffn_widths)} FFN widths for {len(layers)} layers")
    for layer, width in zip(layers, config.ffn_widths):
        family.ffn.resize(layer, width)
    return model


def load_backbone_state(base: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load, except a `pooler.*` the backbone does not build. Shapes are checked with a clear error."""
    own = base.state_dict()
    no_pooler = getattr(base, "pooler", None) is None
    unexpected = [k for k in state if k not in own and not (no_pooler and k.startswith("pooler."))]
    missing = [k for k in own if k not in state]
    if missing or unexpected:
        raise SubModelError(
            f"{source}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in own.items():
        if tensor.shape != state[key].shape:
            raise SubModelError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, model expects {tuple(tensor.shape)}"
            )
    base.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
