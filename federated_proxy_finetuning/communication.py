"""What each client must receive to hold the current sub-FM (spec §4.10, Fig. 2's W_fro synchronisation).

Every alignment changes some of the sub-FM's compressed-FFN weights: the updated neurons' input rows (weight and
bias) and output columns, plus each compressed layer's shared output bias (and LayerNorm). A client holds the sub-FM
as of the last round it took part in; when it is selected again it must receive every change made since then, that
is, per compressed layer, the union of the neurons updated by the alignments it missed, plus the shared output
parameters once. That is never more than the compressed FFNs in full. `SubFMSync` keeps the version each client
holds and the neurons each alignment updated, and charges exactly that. `ffn_changes` gives those values (the
updated neurons' slices and the shared tensors of each touched layer, under short names:
`<layer>.in|out|norm.<param>`) and `apply_ffn_changes` brings a client's copy up to date; `RoundPayload` is what a
remote transport sends a round's clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sub_model_construct.families import Family, backbone, encoder_layers, family_of

from .adapters import state_bytes


@dataclass(frozen=True)
class FFNShape:
    """Parameter counts of one compressed FFN: per neuron (input row + its bias + output column) and shared
    (output bias + post-FFN LayerNorm), plus its width."""

    per_neuron: int
    shared: int
    width: int

    @property
    def full(self) -> int:
        return self.per_neuron * self.width + self.shared


def ffn_shapes(model: nn.Module, family: Family, layers: list[int]) -> dict[int, FFNShape]:
    blocks = encoder_layers(model, family)
    shapes = {}
    for i in layers:
        ffn = family.ffn
        shapes[i] = FFNShape(ffn.per_neuron(blocks[i]), ffn.shared_count(blocks[i]), ffn.width(blocks[i]))
    return shapes


def model_bytes(model: nn.Module, head: tuple[str, ...]) -> int:
    """Bytes of the client model a client must hold before its first round: its state dict (parameters and
    persistent buffers) except the LoRA matrices and the head modules (those travel as the adapter). A tensor
    listed under two names (a causal LM's output projection tied to its input embeddings) counts once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, seen = 0, set()
    for name, tensor in base.state_dict().items():
        if "lora_" in name or "modules_to_save" in name or "original_module" in name:
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        if name.startswith(tuple(f"{h}." for h in head)):  # the head is part of the adapter
            continue
        total += tensor.numel() * tensor.element_size()
    return total


class SubFMSync:
    """Per-client sub-FM versions and the neurons each alignment updated (version v = after v alignments)."""

    def __init__(self, shapes: Mapping[int, FFNShape], num_clients: int, element_size: int) -> None:
        self.shapes = dict(shapes)
        self.element_size = element_size
        self.client_version = [0] * num_clients  # every client receives the sub-FM at version 0 before round 1
        self.updates: list[dict[int, torch.Tensor]] = []  # alignment v+1 -> {layer: updated neuron indices}

    @property
    def version(self) -> int:
        return len(self.updates)

    def record_alignment(self, updated: Mapping[int, torch.Tensor]) -> None:
        unknown = set(updated) - set(self.shapes)
        if unknown:
            raise ValueError(f"alignment updated layers {sorted(unknown)} that are not compressed layers")
        self.updates.append({i: torch.as_tensor(idx, dtype=torch.long).cpu() for i, idx in updated.items()})

    def changes_for(self, client: int) -> dict[int, torch.Tensor]:
        """{layer: neurons updated since `client`'s version} (sorted, unique), for the layers any missed alignment
        touched: what must be sent for the client to hold the current sub-FM."""
        missed = self.updates[self.client_version[client] :]
        changes = {}
        for layer in self.shapes:
            touched = [u[layer] for u in missed if layer in u]
            if touched:
                changes[layer] = torch.unique(torch.cat(touched))
        return changes

    def parameters_to_send(self, client: int) -> int:
        """Sub-FM parameters `client` lacks: per layer the union of neurons updated since its version (plus the
        shared output parameters once if any alignment touched the layer)."""
        total = 0
        for layer, neurons in self.changes_for(client).items():
            shape = self.shapes[layer]
            total += min(neurons.numel(), shape.width) * shape.per_neuron + shape.shared
        return total

    def send(self, client: int) -> int:
        """Bytes of the sub-FM changes sent to `client` now; it then holds the current version."""
        count = self.parameters_to_send(client)
        self.client_version[client] = self.version
        return count * self.element_size

    def connected(self, clients: Sequence[int], installed: Sequence[int]) -> None:
        """Versions after a remote transport's first contact: a client sent the client model then (`installed`)
        holds the current sub-FM (after a resume: the restored one); one with a local copy holds the sub-FM as
        built (version 0) and is sent every alignment's changes when selected."""
        for client in clients:
            self.client_version[client] = self.version if client in installed else 0

    def state_dict(self) -> dict:
        return {"client_version": list(self.client_version), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if len(state["client_version"]) != len(self.client_version):
            raise ValueError("checkpoint sub-FM versions are for a different number of clients")
        self.client_version = list(state["client_version"])
        self.updates = list(state["updates"])


def round_bytes(adapter_bytes: int, sync: SubFMSync, updates, collect: bool, last: dict) -> dict:
    """A round's bytes (spec §4.4, §4.9-4.10), this round's and cumulative after `last` (the previous round's
    record): down, the global adapter plus the sub-FM changes each client that replied lacks (it then holds the
    current sub-FM); up, the adapters plus the zero-activation counts when collected."""
    sent = sum(adapter_bytes + sync.send(u.client) for u in updates)
    received = sum(state_bytes(u.adapter) for u in updates)
    if collect:
        received += sum(state_bytes(u.stats["zero_counts"]) for u in updates)
    return {
        "bytes_sent": sent,
        "bytes_received": received,
        "bytes_sent_cumulative": last.get("bytes_sent_cumulative", 0) + sent,
        "bytes_received_cumulative": last.get("bytes_received_cumulative", 0) + received,
    }


@dataclass(frozen=True)
class RoundPayload:
    """What a round sends its clients: the global adapter in client-model layer names, the round's learning rate,
    whether to count zero activations, and per client the sub-FM FFN changes it lacks (`ffn_changes`; absent when
    none)."""

    round: int
    clients: list[int]
    learning_rate: float
    collect: bool
    seed: int
    adapter: dict[str, torch.Tensor]
    sub_fm: dict[int, dict[str, torch.Tensor]]


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
