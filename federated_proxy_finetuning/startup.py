"""One start-up for every way a federated run begins: `fedtune.py` and `fedtune_cv.py`, the Flower ServerApp
(flower_app.server_main) and the round profile (`bench/round_runs.py`, `scripts/profile_round.py`). From checked
settings: the accelerator (CPU when asked or when no GPU is visible), the process count recorded in the settings (it
enters the effective batch and the run's config), the logging of the main process, and the server
`assemble.build_server` composes (None for a finished run under `--resume auto`)."""

from __future__ import annotations

import dataclasses

import torch

from .modality import Modality
from .settings import FedSettings


def start(settings: FedSettings, modality: Modality, log: bool = True):
    """(server or None, accelerator, settings with the process count) for checked `settings`."""
    from accelerate import Accelerator

    from sub_model_construct.cli import setup_logging

    from .assemble import build_server

    accelerator = Accelerator(cpu=settings.cpu or not torch.cuda.is_available())
    settings = dataclasses.replace(settings, num_processes=accelerator.num_processes)
    if log:
        setup_logging(accelerator.is_main_process)
    return build_server(settings, accelerator, modality), accelerator, settings
