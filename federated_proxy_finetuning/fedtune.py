"""Federated fine-tuning of an FM through a proxy sub-FM (FedPFT), or of the FM itself (FedPETuning), or of a
layer-drop emulator (FedOT) — spec §4.

    python -m accelerate.commands.launch --multi_gpu --num_processes=4 ./fedtune.py \
        --model_checkpoint ../pretrain_models/roberta-base --sub_model_checkpoint ../sub_model_construct/sub_model/... \
        --task_name sst2 --method pft ...

Writes fed-result/<task>/<model>/<run>/ with config.json, metrics.jsonl, summary.json and server checkpoints.
`fedtune_cv.py` is the same program for image tasks. This file is only the command line: the flags are the fields
of `settings.FedSettings`, and everything else happens in the library.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")  # before torch is imported
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft, not actionable

import argparse
import logging
import sys

from federated_proxy_finetuning.modality import MODALITIES
from federated_proxy_finetuning.settings import METHODS, FedSettings
from sub_model_construct import reads, typed_settings
from sub_model_construct.cli import UsageError, run_cli

logger = logging.getLogger("fedtune")
__all__ = ["METHODS", "build_parser", "main"]


def build_parser(modality: str) -> argparse.ArgumentParser:
    return typed_settings.build_parser(
        FedSettings,
        modality,
        f"Federated proxy fine-tuning ({modality} tasks; spec §4).",
        MODALITIES[modality].defaults,
    )


def parse_settings(argv: list[str] | None, modality: str) -> FedSettings:
    namespace = build_parser(modality).parse_args(argv)
    return typed_settings.from_namespace(FedSettings, namespace, MODALITIES[modality].defaults)


def check_flags(argv: list[str] | None, modality: str) -> FedSettings:
    """Every check of the flags that needs no more than the FM's config.json: ranges, combinations and the limits
    of the FM (what a refused command line is refused by before anything is loaded or written)."""
    settings = parse_settings(argv, modality)
    settings.check_inputs()
    settings.check_model_limits(reads.config(settings.model_checkpoint), MODALITIES[modality])
    return settings


def main(argv: list[str] | None = None, modality: str = "text") -> int:
    settings = check_flags(argv, modality)  # refuses bad flags before accelerate starts
    from federated_proxy_finetuning.startup import start

    server, accelerator, settings = start(settings, MODALITIES[modality])
    if server is None:  # --resume auto on a finished run
        return 0
    try:
        summary = server.run()
    finally:
        server.f.run.lock.release()
    if accelerator.is_main_process and "final" in summary:
        key = summary["metric"]
        best = f"best {summary['best_metric']:.4f} (round {summary['best_round']})" if "best_round" in summary else ""
        print(
            f"{settings.method}: final {key} {summary['final'][key]:.4f} (round {summary['final_round']}), "
            f"{best or 'no trained round evaluated'}; results in {server.f.run.path}"
        )
    accelerator.wait_for_everyone()
    return 0


def entry(modality: str) -> None:
    from federated_proxy_finetuning.adapters import FederatedError
    from sub_model_construct.sub_model import SubModelError

    def guarded() -> int:
        try:
            return main(sys.argv[1:], modality)
        except (SubModelError, FederatedError) as exc:
            raise UsageError(str(exc)) from exc

    run_cli(guarded)


if __name__ == "__main__":
    entry("text")
