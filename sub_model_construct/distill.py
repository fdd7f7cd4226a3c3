"""Build a sub-FM from an FM and (with --distill True) align it by layer-level distillation (spec §2–§3).

    python -m accelerate.commands.launch --multi_gpu --num_processes=4 ./distill.py \
        --model_checkpoint ../pretrain_models/roberta-base --layers_retained 0 11 --qk_rank 768 \
        --intermediate_rank 768 --distill True ...

Writes `./sub_model/sub-<FM>-retained<idx>-r1<qk>-r2<ffn>` (undistilled, reused when present) and, with
--distill True, `./sub_model/<that>-distilled-<corpus>-lr..-with-wl` (or --output_dir) with checkpoints,
`distill_log.jsonl` and `distill_summary.json`. `distill_vit.py` is the same program for ViT FMs. This file is only
the command line: the flags are the fields of `settings.DistillSettings`, the steps live in distillation.py.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")  # before torch is imported

import argparse
import logging
import os
import sys

import torch

from sub_model_construct import distillation, io, reads, typed_settings
from sub_model_construct.cli import FETCH_HINT, UsageError, run_cli, setup_logging
from sub_model_construct.modality import COMMAND_LINES
from sub_model_construct.settings import DistillSettings
from sub_model_construct.signals import Interrupted

logger = logging.getLogger("distill")


def build_parser(modality: str) -> argparse.ArgumentParser:
    """The command line of one modality ("text": distill.py, "image": distill_vit.py)."""
    m = COMMAND_LINES[modality]
    description = f"Construct a sub-FM and distil it from its FM ({m.fm_kinds}; spec §2–§3)."
    return typed_settings.build_parser(DistillSettings, m.name, description, m.distill_defaults)


def check_inputs(s: DistillSettings) -> None:
    """Refusals that need the file system or more than one field (ranges are checked with the settings)."""
    if s.fp16:
        raise UsageError("--fp16 is not supported (no loss scaling in this loop); use --bf16 True on a GPU")
    if not os.path.isfile(os.path.join(s.model_checkpoint, "config.json")):
        exists = os.path.isdir(s.model_checkpoint)
        what = "is not a transformers model folder (no config.json)" if exists else "not found"
        raise UsageError(f"model checkpoint {s.model_checkpoint} {what}; {FETCH_HINT}")


def check_outputs(s: DistillSettings, plan: distillation.Plan, out) -> io.RunLock | None:
    """The folders this run writes can be written (room for a few copies of the weights), and the distilled one
    is not in use by another run: its lock, taken by the main process when writing starts."""
    needed = 3 * os.path.getsize(reads.weights_file(s.model_checkpoint))
    if not (plan.sub_dir / "model.safetensors").is_file():
        io.check_writable(plan.sub_dir, "sub-FM folder", needed)
    if out is None:
        return None
    io.check_writable(out, "output folder", needed)
    lock = io.RunLock(out)
    lock.check()
    return lock


def check_flags(argv: list[str] | None, modality: str) -> tuple[DistillSettings, distillation.Plan]:
    """Every check of the flags that needs no more than the FM's config.json: ranges, combinations and the limits
    of the FM (what a refused command line is refused by before anything is loaded or written)."""
    namespace = build_parser(modality).parse_args(argv)
    s = typed_settings.from_namespace(DistillSettings, namespace, COMMAND_LINES[modality].distill_defaults)
    check_inputs(s)
    return s, distillation.plan(s, COMMAND_LINES[modality])


def main(argv: list[str] | None = None, modality: str = "text") -> int:
    s, plan = check_flags(argv, modality)
    corpus = out = None
    if s.distill or s.activation_saliency:  # refused before anything is written: the corpus and the output folder
        corpus = COMMAND_LINES[modality].load_corpus(s, plan.config)
    if s.distill:
        out = distillation.output_folder(s, plan, corpus.tag)
        distillation.check_resumable(s, out)
    lock = check_outputs(s, plan, out)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=s.cpu or not torch.cuda.is_available(), mixed_precision="bf16" if s.bf16 else "no")
    setup_logging(accelerator.is_main_process)
    if lock is not None and accelerator.is_main_process:
        lock.acquire()
    try:
        return distil_steps(s, modality, plan, corpus, out, accelerator)
    except Interrupted as stop:
        last = io.latest_checkpoint(out, distillation.CHECKPOINT_PREFIX, distillation.STATE_FILE) if out else None
        detail = f"during distillation; last checkpoint: {last or 'none yet'}"
        raise stop.saying(f"{detail}; continue with --resume_from_checkpoint True") from None
    finally:
        if lock is not None:
            lock.release()


def distil_steps(s: DistillSettings, modality: str, plan, corpus, out, accelerator) -> int:
    torch.manual_seed(s.seed)  # image crops and flips draw from torch's global RNG
    split = None
    if s.activation_saliency:  # the neurons are ranked on the training items before the sub-FM is built
        split = distillation.split_corpus(s, COMMAND_LINES[modality], corpus, plan.config, accelerator)
    fm, sub, fm_params, sub_params = distillation.build(s, plan, accelerator, split[1:] if split else None)
    if not s.distill:
        return 0
    heldout, data, collate = split or distillation.split_corpus(
        s, COMMAND_LINES[modality], corpus, plan.config, accelerator
    )
    fm.to(accelerator.device)
    resumed, resume_state = distillation.resume_point(s, out, accelerator)
    accelerator.wait_for_everyone()
    sub = (resumed or sub).to(accelerator.device)
    kd, named = distillation.distillation_kd(s, fm, sub)
    error = lambda: distillation.heldout_error(kd, heldout, collate, s.per_device_eval_batch_size, accelerator.device)  # noqa: E731
    errors = {"items": len(heldout), "before": error()}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        logger.info(
            "distilling %d layers on %d items (held-out error before: %.4f)", len(kd.pairs), len(data), errors["before"]
        )
    result = distillation.distil(s, kd, named, data, collate, out, resume_state, accelerator)
    errors["after"] = error()
    if accelerator.is_main_process:
        distillation.report(s, kd, result, errors, (fm_params, sub_params), out)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:], "text"))
