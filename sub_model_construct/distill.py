"""Build a sub-FM from an FM and (with --distill True) align it by layer-level distillation (spec §2–§3).

    python -m accelerate.commands.launch --multi_gpu --num_processes=4 ./distill.py \
        --model_checkpoint ../pretrain_models/roberta-base --layers_retained 0 11 --qk_rank 768 \
        --intermediate_rank 768 --distill True ...

Writes `./sub_model/sub-<FM>-retained<idx>-r1<qk>-r2<ffn>` (undistilled, reused when present) and, with
--distill True, `./sub_model/<that>-distilled-<corpus>-lr..-with-wl` (or --output_dir) with checkpoints,
`distill_log.jsonl` and `distill_summary.json`. `distill_vit.py` is the same program for ViT FMs.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")  # before torch is imported

import argparse
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from sub_model_construct import corpus as corpus_lib
from sub_model_construct.cli import (
    FETCH_HINT,
    UsageError,
    append_jsonl,
    atomic_write_json,
    run_cli,
    setup_logging,
    str2bool,
)
from sub_model_construct.distill_model import LayerKD, distillation_parameters, normalised_mse, prepare_for_distillation
from sub_model_construct.families import UnsupportedModelError, backbone, family_of
from sub_model_construct.sub_model import (
    SubModelError,
    build_layer_drop_emulator,
    build_sub_model,
    compressed_layers,
    distilled_name,
    encoder_layer_parameters,
    load_sub_model,
    mebi,
    save_sub_model,
    sub_model_name,
    uniform_drop_plan,
    validate_construction,
)
from sub_model_construct.train_loop import NonFiniteLossError, OptimConfig, fetch, steps_for, to_device, train

logger = logging.getLogger("distill")


def build_parser(modality: str) -> argparse.ArgumentParser:
    image = modality == "image"
    p = argparse.ArgumentParser(
        description=f"Construct a sub-FM and distil it from its FM ({'ViT' if image else 'BERT/RoBERTa'}; spec §2–§3).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--model_checkpoint", required=True, help="FM folder (transformers format)")
    a("--layers_retained", type=int, nargs="*", default=[], help="layers whose FFN stays whole (paper: 0 11)")
    a(
        "--emulator_layers",
        type=int,
        default=0,
        help="FedOT instead of FedPFT: keep this many middle layers by uniform layer drop (0 = FFN compression)",
    )
    a(
        "--adapter_layers",
        type=int,
        nargs=2,
        default=[1, 1],
        metavar=("BOTTOM", "TOP"),
        help="with --emulator_layers: bottom/top layers kept whole as the offsite-tuning adapters",
    )
    a("--intermediate_rank", type=int, default=1024, help="FFN neurons kept per compressed layer, D' (paper: 768)")
    a("--qk_rank", type=int, default=None, help="must equal the hidden size: attention is not compressed (spec §2.4)")
    a("--distill", type=str2bool, default=False, help="run layer-level distillation after construction")
    a("--split_distill", type=str2bool, default=False, help="accepted for compatibility; no effect (spec §6.2)")
    a("--sub_model_dir", default="./sub_model", help="where sub-FM folders are written")
    a("--output_dir", default=None, help="override the output folder (distilled, or undistilled without --distill)")
    a("--overwrite", type=str2bool, default=False, help="replace an existing distilled output folder")
    if image:
        a(
            "--distill_dataset_path",
            default="../datasets/IMAGENET",
            help="image corpus (HF image folder or ImageFolder)",
        )
        a("--image_size", type=int, default=None, help="crop size (default: the FM config's image_size)")
    else:
        a("--dataset1_path", default="../datasets/bookcorpus", help="first text corpus ('' to skip)")
        a("--dataset2_path", default="../datasets/wikipedia", help="second text corpus ('' to skip)")
        a("--dataset1_config", default=None, help="load_dataset config name of the first corpus")
        a("--dataset2_config", default="20220301.en", help="load_dataset config name of the second corpus")
        a("--block_size", type=int, default=512, help="tokens per training block (spec §3.1)")
        a("--max_seq_length", type=int, default=512, help="each corpus example is truncated to this many tokens first")
    a("--distill_alpha", type=float, default=0.0 if image else 1.0, help="weight of the FFN weight term (spec §3.3)")
    a(
        "--weight_term_grad",
        type=str2bool,
        default=True,
        help="weight term carries gradients (paper intent); False = reference (logged only, spec §6.1)",
    )
    a(
        "--student_dropout",
        type=str2bool,
        default=False,
        help="keep the student's FFN dropout active as the reference does (spec §3.2, §6.13)",
    )
    a("--per_device_train_batch_size", type=int, default=32)
    a("--per_device_eval_batch_size", type=int, default=32)
    a("--gradient_accumulation_steps", type=int, default=4)
    a("--learning_rate", type=float, default=1e-4)
    a("--lr_scheduler_type", default="cosine", help="linear, cosine, constant, ...")
    a("--warm_up_ratio", type=float, default=0.06)
    a("--weight_decay", type=float, default=0.01)
    a("--max_grad_norm", type=float, default=1.0)
    a("--distill_epoch", type=float, default=1.0, help="epochs over the corpus")
    a("--max_steps", type=int, default=0, help="stop after this many optimiser steps (0 = from epochs)")
    a("--logging_steps", type=float, default=0.05, help="log every N steps, or this fraction of all steps if < 1")
    a("--save_steps", type=float, default=0.1, help="checkpoint every N steps, or this fraction if < 1 (0 = never)")
    a("--resume_from_checkpoint", default=None, help="a checkpoint-<step> folder, or True for the latest")
    a("--eval_blocks", type=int, default=64, help="held-out corpus items for the before/after MSE report")
    a("--seed", type=int, default=123)
    a("--bf16", type=str2bool, default=False, help="bfloat16 autocast (GPU)")
    a("--fp16", type=str2bool, default=False, help="not supported: use --bf16")
    a("--num_proc", type=int, default=None, help="processes for corpus tokenisation")
    a("--cache_dir", default=None, help="cache for tokenised corpus blocks (default: <sub_model_dir>/.cache)")
    a("--cpu", type=str2bool, default=False, help="force CPU (gloo) even when a GPU is visible")
    return p


def _interval(value: float, total: int) -> int:
    if value <= 0:
        return 0
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


def _check_args(args, modality: str) -> None:
    if args.fp16:
        raise UsageError("--fp16 is not supported (no loss scaling in this loop); use --bf16 True on a GPU")
    if not os.path.isdir(args.model_checkpoint) or not os.path.isfile(
        os.path.join(args.model_checkpoint, "config.json")
    ):
        what = (
            "is not a transformers model folder (no config.json)"
            if os.path.isdir(args.model_checkpoint)
            else "not found"
        )
        raise UsageError(f"model checkpoint {args.model_checkpoint} {what}; {FETCH_HINT}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if args.learning_rate <= 0 or args.distill_epoch <= 0:
        raise UsageError("--learning_rate and --distill_epoch must be positive")
    if modality == "text" and (args.block_size <= 0 or args.max_seq_length <= 0):
        raise UsageError("--block_size and --max_seq_length must be positive")


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted(
        out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1
    )
    return found[-1] if found else None


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


def main(argv: list[str] | None = None, modality: str = "text") -> int:
    args = build_parser(modality).parse_args(argv)
    _check_args(args, modality)
    from accelerate import Accelerator
    from transformers import AutoConfig, AutoModel

    accelerator = Accelerator(
        cpu=args.cpu or not torch.cuda.is_available(), mixed_precision="bf16" if args.bf16 else "no"
    )
    setup_logging(accelerator.is_main_process)
    torch.manual_seed(args.seed)  # image crops and flips draw from torch's global RNG
    config = AutoConfig.from_pretrained(args.model_checkpoint)
    try:
        family = family_of(config)
        if family.modality != modality:
            script = "distill_vit.py" if family.modality == "image" else "distill.py"
            raise UsageError(f"{args.model_checkpoint} is a {family.name} ({family.modality}) model: use {script}")
        qk_rank = config.hidden_size if args.qk_rank is None else args.qk_rank
        if args.emulator_layers:
            uniform_drop_plan(config.num_hidden_layers, *args.adapter_layers, args.emulator_layers)
        else:
            validate_construction(config, args.layers_retained, args.intermediate_rank, qk_rank)
            if args.distill and len(args.layers_retained) == config.num_hidden_layers:
                raise UsageError("--distill True with every layer in --layers_retained: no compressed layer to distil")
    except (UnsupportedModelError, SubModelError) as exc:
        raise UsageError(str(exc)) from exc

    if args.emulator_layers:
        bottom, top = args.adapter_layers
        name = f"fedot-{os.path.basename(os.path.normpath(args.model_checkpoint))}-adapters{bottom}{top}-emulator{args.emulator_layers}"
    else:
        name = sub_model_name(args.model_checkpoint, args.layers_retained, qk_rank, args.intermediate_rank)
    sub_dir = Path(args.sub_model_dir) / name
    if not args.distill and args.output_dir:
        sub_dir = Path(args.output_dir)

    # --- bad input checks that need no model: corpus and output folder (nothing is written before these pass)
    data = out = None
    if args.distill:
        tokenizer = processor = None
        if modality == "text":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model_checkpoint)
            paths = [args.dataset1_path or None, args.dataset2_path or None]
            try:
                raw = corpus_lib.load_text_corpora(paths, [args.dataset1_config, args.dataset2_config])
            except corpus_lib.CorpusError as exc:
                raise UsageError(str(exc)) from exc
            corpus_tag = corpus_lib.corpus_name(paths)
        else:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(args.model_checkpoint)
            size = args.image_size or config.image_size
            channels = config.num_channels
            mean, std = processor.image_mean[:channels], processor.image_std[:channels]
            try:
                train_images = corpus_lib.load_image_corpus(
                    args.distill_dataset_path, corpus_lib.image_transform(size, mean, std, channels, train=True)
                )
            except corpus_lib.CorpusError as exc:
                raise UsageError(str(exc)) from exc
            corpus_tag = corpus_lib.corpus_name([args.distill_dataset_path])
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        out = (
            Path(args.output_dir)
            if args.output_dir
            else Path(args.sub_model_dir)
            / distilled_name(
                name, corpus_tag, args.learning_rate, args.max_grad_norm, args.distill_epoch, args.distill_alpha, batch
            )
        )
        resuming = _resume_requested(args.resume_from_checkpoint)
        if out.exists() and not (args.overwrite or resuming):
            raise UsageError(f"output folder {out} exists; pass --overwrite True or --resume_from_checkpoint True")
        if resuming and not out.exists():
            raise UsageError(f"--resume_from_checkpoint given but {out} does not exist")

    # --- construction (spec §2), reused when the undistilled folder exists (as the reference does)
    fm = AutoModel.from_pretrained(args.model_checkpoint)
    fm_params = encoder_layer_parameters(fm)
    if (sub_dir / "model.safetensors").is_file():
        logger.info("reusing sub-FM %s", sub_dir)
        sub = load_sub_model(sub_dir)
    else:
        if args.emulator_layers:  # FedOT's layer-drop emulator (spec §4.13, an assumption)
            sub = build_layer_drop_emulator(fm, *args.adapter_layers, args.emulator_layers)
        else:
            sub = build_sub_model(fm, args.layers_retained, args.intermediate_rank, qk_rank)
        if accelerator.is_main_process:
            save_sub_model(sub, sub_dir, {"fm_encoder_layer_parameters": fm_params, "fm": args.model_checkpoint})
        accelerator.wait_for_everyone()
    sub_params = encoder_layer_parameters(sub)
    if accelerator.is_main_process:
        print(
            f"FM encoder-layer parameters: {fm_params:,} ({mebi(fm_params)}); "
            f"sub-FM: {sub_params:,} ({mebi(sub_params)}), ratio {sub_params / fm_params:.3f}; saved in {sub_dir}"
        )
    if not args.distill:
        return 0

    # --- layer-level distillation (spec §3)
    if modality == "text":
        cache = args.cache_dir or str(Path(args.sub_model_dir) / ".cache")
        with accelerator.main_process_first():
            blocks = corpus_lib.text_blocks(
                raw, tokenizer, args.block_size, cache, num_proc=args.num_proc, truncate_at=args.max_seq_length
            )
        blocks = blocks.shuffle(seed=args.seed)
        n_eval = min(args.eval_blocks, len(blocks) // 10)
        heldout, data = blocks.select(range(n_eval)), blocks.select(range(n_eval, len(blocks)))
        collate = corpus_lib.text_collator(tokenizer)
    else:
        eval_images = corpus_lib.load_image_corpus(
            args.distill_dataset_path, corpus_lib.image_transform(size, mean, std, channels, train=False)
        )
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed)).tolist()
        n_eval = min(args.eval_blocks, len(order) // 10)
        heldout = torch.utils.data.Subset(eval_images, order[:n_eval])
        data = torch.utils.data.Subset(train_images, order[n_eval:])
        collate = corpus_lib.image_collate
    if len(data) == 0:
        raise UsageError("the public corpus yields no training items")

    device = accelerator.device
    fm.to(device)
    start_step, resume_state = 0, None
    if resuming:
        ckpt = _latest_checkpoint(out) if _is_true(args.resume_from_checkpoint) else Path(args.resume_from_checkpoint)
        if ckpt is None or not (ckpt / "training_state.pt").is_file():
            raise UsageError(f"no checkpoint to resume from in {out}")
        sub = load_sub_model(ckpt)
        resume_state = torch.load(ckpt / "training_state.pt", weights_only=False)
        start_step = resume_state["step"]
        torch.set_rng_state(resume_state["torch_rng"])
        logger.info("resuming from %s (step %d)", ckpt, start_step)
    elif out.exists() and accelerator.is_main_process:
        shutil.rmtree(out)
    accelerator.wait_for_everyone()
    sub.to(device)
    layers = compressed_layers(sub.config)
    pairs = [(sub.config.layer_targets[j], j) for j in layers]
    named = distillation_parameters(sub, layers)
    prepare_for_distillation(fm, sub, [p for _, p in named], layers if args.student_dropout else ())
    kd = LayerKD(fm, sub, pairs, args.distill_alpha, args.weight_term_grad)

    world = accelerator.num_processes
    effective = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    total = steps_for(len(data), effective, args.distill_epoch)
    if args.max_steps > 0:
        total = min(total, args.max_steps)
    before = heldout_error(kd, heldout, collate, args.per_device_eval_batch_size, device)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        logger.info(
            "distilling %d layers on %d items: %d steps of %d (held-out error before: %.4f)",
            len(pairs),
            len(data),
            total,
            effective,
            before,
        )
    log_path = out / "distill_log.jsonl"
    save_every = _interval(args.save_steps, total)

    def log_fn(record: dict) -> None:
        if accelerator.is_main_process:
            append_jsonl(log_path, record)

    def on_step(step: int, optimizer, scheduler) -> None:
        if save_every and step % save_every == 0 and step < total and accelerator.is_main_process:
            ckpt_dir = out / f"checkpoint-{step}"
            save_sub_model(sub, ckpt_dir)
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_dir / "training_state.pt",
            )

    def loss_fn(batch):
        with accelerator.autocast():
            return kd(batch)

    optim = OptimConfig(
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_ratio=args.warm_up_ratio,
        max_grad_norm=args.max_grad_norm,
    )
    try:
        result = train(
            named,
            data,
            collate,
            loss_fn,
            optim=optim,
            total_steps=total,
            micro_batch_size=args.per_device_train_batch_size,
            effective_batch_size=effective,
            seed=args.seed,
            device=device,
            data_parallel=accelerator,
            log_every=_interval(args.logging_steps, total),
            log_fn=log_fn,
            on_step=on_step,
            start_step=start_step,
            resume_state=resume_state,
            desc="distill",
        )
    except NonFiniteLossError as exc:
        raise UsageError(f"{exc}; last good checkpoint kept in {out}") from exc
    after = heldout_error(kd, heldout, collate, args.per_device_eval_batch_size, device)
    steps_done = max(result["steps"], 1)
    if accelerator.is_main_process:
        save_sub_model(sub, out, {"fm_encoder_layer_parameters": fm_params, "fm": args.model_checkpoint})
        summary = {
            "fm_encoder_layer_parameters": fm_params,
            "sub_fm_encoder_layer_parameters": sub_params,
            "compressed_layers": layers,
            "heldout_items": len(heldout),
            "heldout_hidden_nmse_before": before,
            "heldout_hidden_nmse_after": after,
            "steps": total,
            "effective_batch_size": effective,
            "seconds": result["seconds"],
            "seconds_per_step": result["seconds"] / steps_done,
            "final_train_loss": result["last_loss"],
            "args": vars(args),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(out / "distill_summary.json", summary)
        print(
            f"held-out normalised hidden MSE: {before:.4f} -> {after:.4f} over {len(heldout)} items; "
            f"{total} steps, {summary['seconds_per_step']:.2f} s/step; distilled sub-FM in {out}"
        )
    return 0


def _is_true(value: str) -> bool:
    """A boolean spelling of "yes" (str2bool's); anything else, such as a path, is not."""
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        return False


def _resume_requested(value: str | None) -> bool:
    """--resume_from_checkpoint asks to resume unless it is absent, empty or a boolean "no" (False, 0, no, ...)."""
    if not value:
        return False
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        return True  # a checkpoint folder


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:], "text"))
