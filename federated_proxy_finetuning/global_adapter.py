"""The global adapter (LoRA + head, spec §4.4) and its one owner.

It is kept in the FM's layer names, the names it is evaluated, aligned against and checkpointed under. Only the
client boundary renames it: clients receive it in their model's layer names (`for_clients`) and their adapters are
taken back into FM names before aggregation (`from_client`); for a sub-FM or the FM itself the names are the same,
FedOT's emulator drops layers (adapters.LayerRenamer). The owner aggregates the round's updates (spec §4.7), plugs
the adapter into the FM (spec §4.11), writes it into a round checkpoint and takes it back from one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .adapters import LayerRenamer, adapter_state, aggregate, load_adapter, state_bytes


class GlobalAdapter:
    def __init__(self, state: dict[str, torch.Tensor], renamer: LayerRenamer) -> None:
        self.state = state  # FM layer names
        self.renamer = renamer

    @classmethod
    def of(cls, fm, renamer: LayerRenamer) -> GlobalAdapter:
        """The initial global adapter: the one the FM was wrapped with."""
        return cls(adapter_state(fm), renamer)

    # ------------------------------------------------------------------ the client boundary
    def for_clients(self) -> dict[str, torch.Tensor]:
        """The adapter as a client model holds it (its own layer names)."""
        return self.renamer.to_sub(self.state)

    def from_client(self, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A client's adapter in FM layer names."""
        return self.renamer.to_fm(adapter, self.state)

    # ------------------------------------------------------------------ the server's steps
    def aggregate(
        self, updates: Sequence[tuple[dict, int, int]], mode: str, total_examples: int, num_clients: int
    ) -> None:
        """FedAvg over (client adapter, examples, times drawn) into the new global adapter (adapters.aggregate)."""
        fm_named = [(self.from_client(adapter), n, m) for adapter, n, m in updates]
        self.state = aggregate(fm_named, mode, self.state, total_examples, num_clients)

    def non_finite(self) -> str | None:
        """The first tensor holding a NaN or an infinity, if any."""
        return next((k for k, v in self.state.items() if not torch.isfinite(v).all()), None)

    def nbytes(self) -> int:
        return state_bytes(self.state)

    def plug_into(self, fm) -> None:
        """The plug-in (spec §4.11): the global adapter into the FM."""
        load_adapter(fm, self.state)

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder, fm) -> None:
        """The adapter as stock PEFT files in `folder` (loadable with PeftModel.from_pretrained on the FM): plugged
        into the FM first, so what is written is this adapter whatever the FM held before."""
        self.plug_into(fm)
        fm.save_pretrained(str(folder))

    def restore(self, fm_named: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's adapter (read once, by the run folder, before anything was written)."""
        self.state = fm_named
