"""Sub-FM construction and layer-level distillation as library steps (spec §2-§3): `plan` (checks that need no
model), `build` (construct or reuse the undistilled sub-FM), `split_corpus` (the modality's public corpus, with
items held out), `distil` (the training loop with checkpoints and resume) and `report` (held-out error and
`distill_summary.json`). distill.py strings them together.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import io, reads
from .cli import UsageError
from .distill_model import LayerKD, distillation_parameters, normalised_mse, prepare_for_distillation
from .emulator import build_layer_drop_emulator, uniform_drop_plan
from .families import UnsupportedModelError, backbone, family_of
from .modality import Corpus, Modality
from .settings import DistillSettings
from .sub_model import (
    SubModelError,
    activation_saliency,
    build_sub_model,
    compressed_layers,
    distilled_name,
    encoder_layer_parameters,
    mebi,
    sub_model_name,
    validate_construction,
)
from .sub_model_io import load_sub_model, save_sub_model
from .train_loop import NonFiniteLossError, OptimConfig, fetch, steps_for, to_device, train
from .typed_settings import as_flags

logger = logging.getLogger("distill")
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"


@dataclass
class Plan:
    config: object  # the FM's transformers config
    qk_rank: int
    sub_dir: Path  # the undistilled sub-FM (or emulator) folder


def plan(s: DistillSettings, modality: Modality) -> Plan:
    config = reads.config(s.model_checkpoint)
    try:
        family = family_of(config)
        if family.modality.command_line is not modality:  # a causal LM is distilled on text, with distill.py
            kind = f"{family.name} ({family.modality.name})"
            raise UsageError(f"{s.model_checkpoint} is a {kind} model: use {family.modality.distill_script}")
        modality.check_limits(config, ("--block_size", s.block_size) if s.distill else None, s.image_size)
        qk_rank = config.hidden_size if s.qk_rank is None else s.qk_rank
        if s.emulator_layers:
            uniform_drop_plan(config.num_hidden_layers, *s.adapter_layers, s.emulator_layers)
            if s.activation_saliency:
                raise UsageError("--saliency activation ranks FFN neurons: it does not apply to --emulator_layers")
        else:
            validate_construction(config, list(s.layers_retained), s.intermediate_rank, qk_rank)
            if s.distill and len(s.layers_retained) == config.num_hidden_layers:
                raise UsageError("--distill True with every layer in --layers_retained: no compressed layer to distil")
        if s.distill and s.distill_alpha and len(family.ffn.inputs) != 1:
            raise UsageError(
                f"the FFN weight term is defined for one input matrix; a {family.name} FFN has "
                f"{len(family.ffn.inputs)} ({', '.join(family.ffn.inputs)}): pass --distill_alpha 0"
            )
    except (UnsupportedModelError, SubModelError) as exc:
        raise UsageError(str(exc)) from exc
    if s.emulator_layers:
        bottom, top = s.adapter_layers
        fm = os.path.basename(os.path.normpath(s.model_checkpoint))
        name = f"fedot-{fm}-adapters{bottom}{top}-emulator{s.emulator_layers}"
    else:
        name = sub_model_name(s.model_checkpoint, list(s.layers_retained), qk_rank, s.intermediate_rank)
        name += "-act" if s.activation_saliency else ""
    sub_dir = Path(s.output_dir) if not s.distill and s.output_dir else Path(s.sub_model_dir) / name
    return Plan(config, qk_rank, sub_dir)


def output_folder(s: DistillSettings, plan_: Plan, corpus_tag: str) -> Path:
    """The distilled sub-FM's folder (spec §3.5), refused when it exists and neither overwrite nor resume says so."""
    batch = s.per_device_train_batch_size * s.gradient_accumulation_steps
    out = (
        Path(s.output_dir)
        if s.output_dir
        else Path(s.sub_model_dir)
        / distilled_name(
            plan_.sub_dir.name, corpus_tag, s.learning_rate, s.max_grad_norm, s.distill_epoch, s.distill_alpha, batch
        )
    )
    if out.exists() and not (s.overwrite or s.resuming):
        raise UsageError(f"output folder {out} exists; pass --overwrite True or --resume_from_checkpoint True")
    if s.resuming and not out.exists():
        raise UsageError(f"--resume_from_checkpoint given but {out} does not exist")
    return out


def build(s: DistillSettings, plan_: Plan, accelerator, saliency_items=None):
    """(FM, sub-FM, FM and sub-FM encoder-layer parameters): construction (spec §2), reusing the undistilled folder
    when it exists (as the reference does). `saliency_items` = (public-corpus items, collate) with --saliency
    activation."""
    from transformers import AutoModel

    fm = reads.pretrained(AutoModel, s.model_checkpoint, allow_missing=("pooler.",))
    fm_params = encoder_layer_parameters(fm)
    if (plan_.sub_dir / "model.safetensors").is_file():
        logger.info("reusing sub-FM %s", plan_.sub_dir)
        sub = load_sub_model(plan_.sub_dir)
    else:
        if s.emulator_layers:  # FedOT's layer-drop emulator (spec §4.13, an assumption)
            sub = build_layer_drop_emulator(fm, *s.adapter_layers, s.emulator_layers)
        else:
            scores = neuron_activations(s, fm, saliency_items, accelerator) if saliency_items else None
            sub = build_sub_model(fm, list(s.layers_retained), s.intermediate_rank, plan_.qk_rank, saliency=scores)
        if accelerator.is_main_process:
            save_sub_model(sub, plan_.sub_dir, {"fm_encoder_layer_parameters": fm_params, "fm": s.model_checkpoint})
        accelerator.wait_for_everyone()
    sub_params = encoder_layer_parameters(sub)
    if accelerator.is_main_process:
        print(
            f"FM encoder-layer parameters: {fm_params:,} ({mebi(fm_params)}); "
            f"{student_name(s)}: {sub_params:,} ({mebi(sub_params)}), ratio {sub_params / fm_params:.3f}; "
            f"saved in {plan_.sub_dir}"
        )
    return fm, sub, fm_params, sub_params


def neuron_activations(s: DistillSettings, fm, saliency_items, accelerator) -> dict:
    """Activation saliency of every compressed layer's neurons over the first --saliency_blocks training items."""
    data, collate = saliency_items
    count, size = min(s.saliency_blocks, len(data)), s.per_device_eval_batch_size
    batches = (collate(fetch(data, range(b, min(b + size, count)))) for b in range(0, count, size))
    compressed = [i for i in range(fm.config.num_hidden_layers) if i not in s.layers_retained]
    fm.to(accelerator.device)
    scores = activation_saliency(fm, batches, compressed)
    logger.info("activation saliency of %d layers over %d public-corpus items", len(compressed), count)
    return scores


def split_corpus(s: DistillSettings, modality: Modality, corpus: Corpus, config, accelerator):
    """(held-out items, training items, collate) of the public corpus, refused when nothing is left to train on."""
    heldout, data, collate = modality.split_corpus(s, corpus, config, accelerator)
    if len(data) == 0:
        raise UsageError("the public corpus yields no training items")
    return heldout, data, collate


def resume_checkpoint(s: DistillSettings, out: Path) -> Path:
    """The checkpoint --resume_from_checkpoint names (the latest one for True)."""
    ckpt = (
        io.latest_checkpoint(out, CHECKPOINT_PREFIX, STATE_FILE) if s.resume_latest else Path(s.resume_from_checkpoint)
    )
    if ckpt is None or not (ckpt / STATE_FILE).is_file():
        raise UsageError(f"no checkpoint to resume from in {out}")
    return ckpt


def read_checkpoint(ckpt: Path):
    """(sub-FM, training state) of a checkpoint folder, or one line naming the file that cannot be read."""
    sub = load_sub_model(ckpt)
    with reads.reading(ckpt / STATE_FILE, "training state"):
        state = io.load_state(ckpt, STATE_FILE)
        for key in ("step", "optimizer", "scheduler", "torch_rng"):
            state[key]  # noqa: B018 - a state without them is damaged
    return sub, state


def check_resumable(s: DistillSettings, out: Path) -> None:
    """Read the checkpoint a resume will start from, before anything is written (the random draws of rebuilding
    the sub-FM are undone: the resume itself restores the RNG after building)."""
    if s.resuming:
        with torch.random.fork_rng(devices=[]):
            read_checkpoint(resume_checkpoint(s, out))


def resume_point(s: DistillSettings, out: Path, accelerator):
    """(sub-FM from the checkpoint or None, its training state or None); a fresh run clears `out`."""
    if s.resuming:
        ckpt = resume_checkpoint(s, out)
        sub, state = read_checkpoint(ckpt)  # rebuilding it draws random initial weights: restore the RNG afterwards
        torch.set_rng_state(state["torch_rng"])
        logger.info("resuming from %s (step %d)", ckpt, state["step"])
        return sub, state
    if out.exists() and accelerator.is_main_process:
        shutil.rmtree(out)
    return None, None


def interval(value: float, total: int) -> int:
    """Every `value` steps, or this fraction of `total` when below 1 (0 = never)."""
    if value <= 0:
        return 0
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


def heldout_error(kd: LayerKD, data, collate, batch_size: int, device) -> float:
    """Mean normalised hidden-state MSE over the compressed layers on held-out items (no weight term)."""
    totals, count = 0.0, 0
    teacher, student = backbone(kd.teacher), backbone(kd.student)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = fetch(data, range(start, min(start + batch_size, len(data))))
            batch = to_device(collate(rows), device)
            t = teacher(**batch, output_hidden_states=True).hidden_states
            s = student(**batch, output_hidden_states=True).hidden_states
            value = torch.stack([normalised_mse(t[a + 1], s[b + 1]) for a, b in kd.pairs]).mean()
            totals += value.item() * len(rows)
            count += len(rows)
    return totals / max(count, 1)


def distillation_kd(s: DistillSettings, fm, sub):
    """(LayerKD, trainable named parameters) with the trainable set of spec §3.2."""
    layers = compressed_layers(sub.config)
    pairs = [(sub.config.layer_targets[j], j) for j in layers]
    named = distillation_parameters(sub, layers)
    prepare_for_distillation(fm, sub, [p for _, p in named], layers if s.student_dropout else ())
    return LayerKD(fm, sub, pairs, s.distill_alpha, s.weight_term_grad), named


def distil(s: DistillSettings, kd: LayerKD, named, data, collate, out: Path, resume_state, accelerator) -> dict:
    """Layer-level distillation (spec §3.4): the one training loop, logging to distill_log.jsonl and saving
    `checkpoint-<step>` folders (sub-FM + optimiser, scheduler and RNG state) every --save_steps, the newest
    --save_total_limit of them kept."""
    effective = s.per_device_train_batch_size * accelerator.num_processes * s.gradient_accumulation_steps
    total = steps_for(len(data), effective, s.distill_epoch)
    total = min(total, s.max_steps) if s.max_steps > 0 else total
    save_every = interval(s.save_steps, total)
    main = accelerator.is_main_process

    def on_step(step: int, optimizer, scheduler) -> None:
        if save_every and step % save_every == 0 and step < total and main:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            io.save_checkpoint(
                out / f"{CHECKPOINT_PREFIX}{step}", lambda p: save_sub_model(kd.student, p), state, STATE_FILE
            )
            if s.save_total_limit:  # only after the new one is complete, so a crash never leaves none
                newest = sorted(io.checkpoints(out, CHECKPOINT_PREFIX, STATE_FILE))[-s.save_total_limit :]
                io.prune_checkpoints(out, CHECKPOINT_PREFIX, set(newest))

    def loss_fn(batch):
        with accelerator.autocast():
            return kd(batch)

    optim = OptimConfig(s.learning_rate, s.weight_decay, s.lr_scheduler_type, s.warm_up_ratio, s.max_grad_norm)
    try:
        result = train(
            named, data, collate, loss_fn, optim=optim, total_steps=total,
            micro_batch_size=s.per_device_train_batch_size, effective_batch_size=effective, seed=s.seed,
            device=accelerator.device, data_parallel=accelerator, log_every=interval(s.logging_steps, total),
            log_fn=lambda record: main and io.append_jsonl(out / "distill_log.jsonl", record), on_step=on_step,
            start_step=resume_state["step"] if resume_state else 0, resume_state=resume_state, desc="distill",
        )  # fmt: skip
    except NonFiniteLossError as exc:
        last = io.latest_checkpoint(out, CHECKPOINT_PREFIX, STATE_FILE)
        raise UsageError(f"{exc}; last good checkpoint: {last or 'none written yet'}") from exc
    return {**result, "total_steps": total, "effective_batch_size": effective}


def student_name(s: DistillSettings) -> str:
    """What is built and distilled: FedOT's layer-drop emulator or FedPFT's sub-FM."""
    return "emulator" if s.emulator_layers else "sub-FM"


def report(s: DistillSettings, kd: LayerKD, result: dict, errors: dict, params: tuple[int, int], out: Path) -> None:
    """The distilled sub-FM, `distill_summary.json` and one line on stdout (main process)."""
    fm_params, sub_params = params
    save_sub_model(kd.student, out, {"fm_encoder_layer_parameters": fm_params, "fm": s.model_checkpoint})
    total = result["total_steps"]
    summary = {
        "fm_encoder_layer_parameters": fm_params,
        "sub_fm_encoder_layer_parameters": sub_params,
        "compressed_layers": compressed_layers(kd.student.config),
        "heldout_items": errors["items"],
        "heldout_hidden_nmse_before": errors["before"],
        "heldout_hidden_nmse_after": errors["after"],
        "steps": total,
        "effective_batch_size": result["effective_batch_size"],
        "seconds": result["seconds"],
        "seconds_per_step": result["seconds"] / max(result["steps"], 1),
        "final_train_loss": result["last_loss"],
        "args": as_flags(s),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    io.atomic_write_json(out / "distill_summary.json", summary)
    if not s.keep_checkpoints:  # they only serve a resume, and a finished distillation is reused, never resumed
        io.prune_checkpoints(out, CHECKPOINT_PREFIX, set())
    print(
        f"held-out normalised hidden MSE: {errors['before']:.4f} -> {errors['after']:.4f} over {errors['items']} "
        f"items; {total} steps, {summary['seconds_per_step']:.2f} s/step; distilled {student_name(s)} in {out}"
    )
