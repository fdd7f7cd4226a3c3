"""The server's aligner (spec §4.9-4.10): it owns the (FM layer, sub-FM layer) pairs it aligns, the public corpus,
its settings, the shrinking accumulation schedule and its part of the round checkpoint. A method that does not
align (FedPETuning, FedOT) simply has no aligner; the mechanics live in align.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from .adapters import load_adapter
from .align import align, ffn_state, load_ffn_state, next_grad_accum
from .flag_groups import AlignSettings

SUMMARY_KEYS = ("steps", "effective_batch_size", "loss", "last_loss", "grad_accum_steps", "changed_parameters")


class Aligner:
    def __init__(
        self,
        settings: AlignSettings,
        pairs: Sequence[tuple[int, int]],
        public_data,
        collate,
        max_grad_norm: float,
        seed: int,
    ) -> None:
        self.settings = settings
        self.pairs = list(pairs)
        self.data, self.collate = public_data, collate
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        self.grad_accum = settings.grad_accum_start

    @property
    def layers(self) -> list[int]:
        """The sub-FM's compressed layers: aligned, and where clients count zero activations."""
        return [s for _, s in self.pairs]

    def aligns_in(self, round_index: int) -> bool:
        return round_index % self.settings.interval == 0

    def collects_in(self, round_index: int) -> bool:
        """Clients count zero activations for this round's alignment (not needed when nothing stays frozen)."""
        return self.aligns_in(round_index) and self.settings.retained_ratio > 0

    def run(
        self, fm, client_model, rates, round_index: int, accelerator, global_adapter: dict, last_client: dict
    ) -> dict:
        """One alignment of the client model (student) to the FM (teacher), which carries the plugged-in global
        adapter. The student carries it too, or with --align_adapter reference the last client's (spec §6.5)."""
        self.grad_accum = next_grad_accum(self.grad_accum, self.settings.grad_accum_min, self.settings.epochs)
        load_adapter(client_model, global_adapter if self.settings.adapter == "global" else last_client)
        return align(
            fm,
            client_model,
            self.pairs,
            rates,
            self.data,
            self.collate,
            self.settings,
            self.grad_accum,
            seed=self.seed + round_index,
            accelerator=accelerator,
            max_grad_norm=self.max_grad_norm,
            where={"round": round_index},
        )

    @staticmethod
    def summary(result: dict) -> dict:
        """What metrics.jsonl records of an alignment (align/round<r>.json holds the whole log)."""
        return {k: result[k] for k in SUMMARY_KEYS}

    def state_dict(self, client_model) -> dict[str, object]:
        """The accumulation counter and the sub-FM weights alignment changed (for round checkpoints and resume)."""
        return {"grad_accum": self.grad_accum, "sub_fm_ffn": ffn_state(client_model, self.layers)}

    def load_state_dict(self, state: dict, client_model) -> None:
        self.grad_accum = state["grad_accum"]
        if "sub_fm_ffn" in state:
            load_ffn_state(client_model, self.layers, state["sub_fm_ffn"])
