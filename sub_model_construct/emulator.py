"""The FedOT offsite-tuning emulator (spec §4.13): full copies of a uniform selection of the FM's middle layers
between bottom/top adapter layers kept whole, the other layers dropped."""

from __future__ import annotations

import copy

from torch import nn
from transformers import PreTrainedModel

from .families import backbone, encoder_layers, family_of
from .sub_model import SubModelError, record_sub_config


def _replace(parent: nn.Module, path: str, new: nn.Module) -> None:
    owner_path, _, child = path.rpartition(".")
    owner = parent.get_submodule(owner_path) if owner_path else parent
    setattr(owner, child, new)


def renumber(layers: nn.ModuleList) -> None:
    """Give kept layers their new positions where a module records its own (a decoder's attention indexes its KV
    cache by `layer_idx`: a kept FM layer 11 of a 7-layer emulator would look past the cache's end)."""
    for j, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j


def uniform_drop_plan(n_layers: int, adapter_bottom: int, adapter_top: int, emulator_layers: int) -> list[int]:
    """FedOT layer plan (spec §4.13, an assumption): bottom/top adapter layers kept, `emulator_layers` of the middle
    layers chosen uniformly (every k-th layer). Returns the FM indices kept, ascending."""
    middle = list(range(adapter_bottom, n_layers - adapter_top))
    if adapter_bottom + adapter_top >= n_layers:
        raise SubModelError(f"adapter layers ({adapter_bottom}+{adapter_top}) leave no middle layers of {n_layers}")
    if not 1 <= emulator_layers <= len(middle):
        raise SubModelError(f"--emulator_layers must be in 1..{len(middle)}, got {emulator_layers}")
    step = len(middle) / emulator_layers
    kept_middle = [middle[int(k * step)] for k in range(emulator_layers)]
    return list(range(adapter_bottom)) + kept_middle + list(range(n_layers - adapter_top, n_layers))


def build_layer_drop_emulator(
    fm: PreTrainedModel, adapter_bottom: int, adapter_top: int, emulator_layers: int
) -> PreTrainedModel:
    """Offsite-tuning emulator for FedOT: full copies of the kept FM layers, the others dropped (spec §4.13).

    `layer_map[j]` is the FM layer that sub-FM layer j was copied from (used to plug LoRA back in);
    `layer_targets[j]` is the FM layer whose output layer j stands in for (the last layer of the block it replaces),
    used by layer-level distillation of the emulator.
    """
    config = fm.config
    family = family_of(config)
    n = config.num_hidden_layers
    kept = uniform_drop_plan(n, adapter_bottom, adapter_top, emulator_layers)
    sub = copy.deepcopy(fm)
    layers = encoder_layers(sub, family)
    widths = [family.ffn.width(layers[i]) for i in kept]
    new_layers = nn.ModuleList([layers[i] for i in kept])
    renumber(new_layers)
    _replace(backbone(sub), family.layers, new_layers)
    targets = [(kept[j + 1] - 1) if j + 1 < len(kept) else n - 1 for j in range(len(kept))]
    sub.config.num_hidden_layers = len(kept)
    retained = list(range(adapter_bottom)) + list(range(len(kept) - adapter_top, len(kept)))
    record_sub_config(
        sub.config,
        layers_retained=retained,
        intermediate_rank=max(widths),
        qk_rank=config.hidden_size,
        ffn_widths=widths,
        layer_map=kept,
        layer_targets=targets,
        fm_num_hidden_layers=n,
    )
    return sub
