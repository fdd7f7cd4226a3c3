"""Methods as objects (spec §4.13): what each method's clients train, and whether the server aligns it.

A `ClientModel` is one kind of model the clients hold: the FM itself (FedPETuning), an FFN-compressed sub-FM
(FedPFT and its ablations) or a layer-drop emulator (FedOT). It knows whether it needs a built folder, how to check
one, which of its layers carry LoRA, what the run folder's model level is called, and the paper's name of a run of
it. Nothing outside this module asks which kind a run's client model is by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sub_model_construct.cli import UsageError


@dataclass(frozen=True)
class ClientModel:
    """The FM itself: LoRA on every layer of the FM, no folder of its own."""

    label: str = "FM"
    reads_folder: bool = False  # built by distill.py and read from --sub_model_checkpoint when given
    needs_folder: bool = False  # ... and --sub_model_checkpoint is required

    def folder_name(self, model_checkpoint: str, sub_model_checkpoint: str | None) -> str:
        """The run folder's model level (spec §4.12): the FM's folder name."""
        return os.path.basename(os.path.normpath(model_checkpoint))

    def tuned_layers(self, config) -> list[int]:
        """The layers that carry LoRA: attention LoRA in every layer."""
        return list(range(config.num_hidden_layers))

    def check_built(self, method: str, folder: str | None, drops_layers: bool) -> None:
        """Refuse a built client model of the wrong kind (nothing to check for the FM itself)."""

    def distilled(self, sub_model_checkpoint: str | None) -> bool | None:
        """Whether the client model was distilled before FL (None: not a built model)."""
        return None

    def paper_name(self, distilled: bool | None, aligning: bool | None) -> str:
        return "FedPETuning"


@dataclass(frozen=True)
class SubFM(ClientModel):
    """An FFN-compressed sub-FM: every layer kept (FedPFT and its ablations N, B, D)."""

    label: str = "sub-FM"
    reads_folder: bool = True
    needs_folder: bool = True

    def folder_name(self, model_checkpoint: str, sub_model_checkpoint: str | None) -> str:
        """The built model's folder name (an emulator made at start-up: fedot-<FM>)."""
        if sub_model_checkpoint:
            return os.path.basename(os.path.normpath(sub_model_checkpoint))
        return f"fedot-{os.path.basename(os.path.normpath(model_checkpoint))}"

    def check_built(self, method: str, folder: str | None, drops_layers: bool) -> None:
        if drops_layers:
            raise UsageError(f"--method {method} needs an FFN-compressed sub-FM, but {folder} drops layers")

    def distilled(self, sub_model_checkpoint: str | None) -> bool | None:
        folder = sub_model_checkpoint
        return bool(folder) and os.path.isfile(os.path.join(folder, "distill_summary.json"))

    def paper_name(self, distilled: bool | None, aligning: bool | None) -> str:
        names = {
            (True, True): "FedPFT",
            (True, False): "FedPFT_B",
            (False, True): "FedPFT_D",
            (False, False): "FedPFT_N",
        }
        return names[bool(distilled), bool(aligning)]


@dataclass(frozen=True)
class Emulator(SubFM):
    """Offsite-tuning's layer-drop emulator (FedOT): the bottom and top layers are the tuned adapters."""

    label: str = "emulator"
    needs_folder: bool = False  # without a folder the emulator is built at start-up by uniform layer drop

    def tuned_layers(self, config) -> list[int]:
        """FedOT tunes its adapters (the bottom and top layers, kept whole) only."""
        return list(config.layers_retained)

    def check_built(self, method: str, folder: str | None, drops_layers: bool) -> None:
        if not drops_layers:
            raise UsageError(f"--method {method} needs a layer-drop emulator, but {folder} keeps all layers")

    def paper_name(self, distilled: bool | None, aligning: bool | None) -> str:
        return "FedOT" if distilled else "FedOT w/o KD"


FM_ITSELF, SUB_FM, EMULATOR = ClientModel(), SubFM(), Emulator()


@dataclass(frozen=True)
class Method:
    """What a method is made of: the model its clients train, and whether the server aligns it."""

    client: ClientModel
    aligns: bool

    def paper_name(self, distilled: bool | None, aligning: bool | None) -> str:
        """The paper's name of a run of this method (spec §4.13): FedPFT's ablations by distillation and alignment,
        FedOT with or without KD."""
        return self.client.paper_name(distilled, aligning)


METHODS = {
    "pft": Method(client=SUB_FM, aligns=True),  # FedPFT
    "peft": Method(client=FM_ITSELF, aligns=False),  # FedPETuning
    "fedot": Method(client=EMULATOR, aligns=False),  # FedOT
}
