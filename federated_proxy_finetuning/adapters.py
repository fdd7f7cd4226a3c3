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
    FM itself, a renaming for FedOT's emulator, which drops layers (spec §4.13). With LoRA on the FFN, a sub-FM's
    cut FFN holds only the kept neurons: `neurons` {client layer: FM neuron indices} gathers their rows (the input
    matrices' lora_B and biases) and columns (the output matrix's lora_A) for the client and scatters a client's
    back into the FM-shaped adapter, whose other neurons it leaves as they are."""

    def __init__(
        self, family: Family, layer_map: Sequence[int], neurons: dict[int, torch.Tensor] | None = None
    ) -> None:
        self.to_fm_index = {j: i for j, i in enumerate(layer_map)}
        self.to_sub_index = {i: j for j, i in enumerate(layer_map)}
        self.identity = list(layer_map) == list(range(len(layer_map)))
        self.pattern = re.compile(rf"(\.{re.escape(family.layers)}\.)(\d+)(\.)")
        self.neurons = {self.to_fm_index[j]: idx for j, idx in (neurons or {}).items()}  # FM layer -> neurons
        ffn = family.ffn
        # per-neuron tensors by their name below the layer ("mlp.gate_proj.lora_B.weight"), and the neurons' axis
        self.neuron_axis = {f"{name}.lora_B.weight": 0 for name in ffn.inputs} | {
            f"{name}.bias": 0 for name in ffn.inputs
        }
        self.neuron_axis[f"{ffn.output}.lora_A.weight"] = 1

    def _rename(self, state: dict, mapping: dict) -> dict:
        if self.identity:
            return dict(state)
        return {
            self.pattern.sub(lambda m: f"{m[1]}{mapping[int(m[2])]}{m[3]}", k, count=1): v for k, v in state.items()
        }

    def _cut(self, key: str) -> tuple[torch.Tensor, int] | None:
        """(FM neuron indices, neuron axis) when `key` (FM names) is a per-neuron tensor of a cut FFN, else None."""
        if not self.neurons:
            return None
        match = self.pattern.search(key)
        if match is None or int(match[2]) not in self.neurons:
            return None
        axis = self.neuron_axis.get(key[match.end() :])  # exact: attention.output.dense is not output.dense
        return None if axis is None else (self.neurons[int(match[2])], axis)

    def to_fm(self, state: dict, base: dict | None = None) -> dict:
        """A client's adapter in FM names and shapes: a cut FFN's neurons scattered into `base` (the FM-shaped
        adapter it was trained from)."""
        renamed = self._rename(state, self.to_fm_index)
        for key, value in renamed.items():
            if (cut := self._cut(key)) is not None:
                renamed[key] = base[key].clone().index_copy_(cut[1], cut[0], value)
        return renamed

    def to_sub(self, state: dict) -> dict:
        """The FM-shaped adapter in a client model's names and shapes (a cut FFN's kept neurons gathered)."""
        gathered = {
            k: (v if (cut := self._cut(k)) is None else v.index_select(cut[1], cut[0])) for k, v in state.items()
        }
        return self._rename(gathered, self.to_sub_index)

    def zero_cut_neurons(self, fm) -> None:
        """Zero the LoRA of the FM's neurons no client holds (the output matrix's lora_A columns; the inputs' lora_B
        start at zero): the plugged-in adapter then changes exactly the neurons the clients trained."""
        with torch.no_grad():
            for name, param in fm.named_parameters():
                cut = self._cut(name.replace(".lora_A.default.", ".lora_A."))
                if cut is not None and cut[1] == 1:
                    others = torch.ones(param.shape[1], dtype=torch.bool)
                    others[cut[0]] = False
                    param[:, others] = 0.0


def lora_target_regex(family: Family, layers: Sequence[int], ffn: bool = False) -> str:
    """Regex over full module names: the attention projections (q, k, v, o) of the given layers (spec §4.4; the
    reference's ViT target-name bug, spec §6.11, is not copied), and with `ffn` the FFN's input and output matrices."""
    idx = "|".join(str(i) for i in layers)
    names = [*family.attention, *((*family.ffn.inputs, family.ffn.output) if ffn else ())]
    mods = "|".join(re.escape(m) for m in names)
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
    ffn: bool = False,
):
    """`model` with LoRA on the attention of `layers` (and their FFN with `ffn`); the head (the family's, unless
    named) trains whole."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=lora_target_regex(family, layers, ffn),
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
