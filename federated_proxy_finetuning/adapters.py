"""The communicated object (spec §4.4): the LoRA adapter plus the head. Its state, loading it into a model, renaming
its layers between an emulator and the FM (FedOT), FedAvg over client adapters (spec §4.7) and the LoRA wrapping
itself (targets from the family table), used by the federated runs and the benchmark (bench/) alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from sub_model_construct.families import Family


class FederatedError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss, an adapter that does not fit); the message says where and why."""


def adapter_state(model) -> dict[str, torch.Tensor]:
    """LoRA A/B of every target plus the head, cloned to CPU (state-dict tensors alias live parameters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k or "modules_to_save" in k]
    if missing:
        raise FederatedError(f"adapter does not fit the model: missing {missing[:3]}")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def check_adapters_match(sub_state: dict, fm_state: dict) -> None:
    """Plug-in needs identical keys and shapes (spec §2.7, §4.11); checked once at start-up."""
    if set(sub_state) != set(fm_state):
        only_sub = sorted(set(sub_state) - set(fm_state))[:3]
        only_fm = sorted(set(fm_state) - set(sub_state))[:3]
        raise FederatedError(f"sub-FM and FM adapters differ: only in sub-FM {only_sub}, only in FM {only_fm}")
    for k, v in sub_state.items():
        if v.shape != fm_state[k].shape:
            raise FederatedError(
                f"adapter tensor {k}: sub-FM shape {tuple(v.shape)} != FM shape {tuple(fm_state[k].shape)}"
            )


class LayerRenamer:
    """Maps adapter keys between client-model layer indices and FM layer indices: the identity for a sub-FM or the
    FM itself, a renaming for FedOT's emulator, which drops layers (spec §4.13)."""

    def __init__(self, family: Family, layer_map: Sequence[int]) -> None:
        self.to_fm_index = {j: i for j, i in enumerate(layer_map)}
        self.to_sub_index = {i: j for j, i in enumerate(layer_map)}
        self.identity = list(layer_map) == list(range(len(layer_map)))
        self.pattern = re.compile(rf"(\.{re.escape(family.layers)}\.)(\d+)(\.)")

    def _rename(self, state: dict, mapping: dict) -> dict:
        if self.identity:
            return dict(state)
        return {
            self.pattern.sub(lambda m: f"{m[1]}{mapping[int(m[2])]}{m[3]}", k, count=1): v for k, v in state.items()
        }

    def to_fm(self, state: dict) -> dict:
        return self._rename(state, self.to_fm_index)

    def to_sub(self, state: dict) -> dict:
        return self._rename(state, self.to_sub_index)


def lora_target_regex(family: Family, layers: Sequence[int]) -> str:
    """Regex over full module names: the attention projections (q, k, v, o) of the given layers (spec §4.4; the
    reference's ViT target-name bug, spec §6.11, is not copied)."""
    idx = "|".join(str(i) for i in layers)
    mods = "|".join(re.escape(m) for m in family.attention)
    return rf".*\.{re.escape(family.layers)}\.({idx})\.({mods})$"


def with_lora(
    model,
    family: Family,
    layers: Sequence[int],
    rank: int,
    alpha: float,
    dropout: float = 0.1,
    bias: str = "none",
    modules_to_save: Sequence[str] | None = None,
):
    """`model` with LoRA on the attention of `layers`; the head (the family's, unless named) trains whole."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=lora_target_regex(family, layers),
        modules_to_save=list(modules_to_save) if modules_to_save is not None else list(family.head),
    )
    return get_peft_model(model, config)


def aggregate(
    updates: Sequence[tuple[dict, int, int]], mode: str, global_state: dict, total_examples: int, num_clients: int
) -> dict[str, torch.Tensor]:
    """FedAvg over (adapter, num_examples, multiplicity) triples, weights paired with their own update (spec §4.7,
    fixing §6.8). Modes: weighted (paper: n_k / sum of the selected n), uniform (reference default: plain mean over
    draws), weighted_scale (sum p_k W_k * N/K with p_k = n_k/n), weighted_com ((1 - sum p_k) W + sum p_k W_k)."""
    draws = sum(m for _, _, m in updates)
    if mode == "uniform":
        weights = [m / draws for _, _, m in updates]
    elif mode == "weighted":
        selected = sum(n * m for _, n, m in updates)
        weights = [n * m / selected for _, n, m in updates]
    elif mode in ("weighted_scale", "weighted_com"):
        weights = [n * m / total_examples for _, n, m in updates]
    else:
        raise ValueError(f"unknown aggregation {mode!r}")
    out = {}
    for key in updates[0][0]:
        acc = sum(w * u[key].double() for w, (u, _, _) in zip(weights, updates))
        if mode == "weighted_scale":
            acc = acc * num_clients / draws
        elif mode == "weighted_com":
            acc = acc + (1 - sum(weights)) * global_state[key].double()
        out[key] = acc.to(updates[0][0][key].dtype)
    return out
