"""Federated fine-tuning of an FM through a proxy sub-FM (FedPFT), or of the FM itself (FedPETuning), or of a
layer-drop emulator (FedOT) — spec §4.

    python -m accelerate.commands.launch --multi_gpu --num_processes=4 ./fedtune.py \
        --model_checkpoint ../pretrain_models/roberta-base --sub_model_checkpoint ../sub_model_construct/sub_model/... \
        --task_name sst2 --method pft ...

Writes fed-result/<task>/<model>/<run>/ with config.json, metrics.jsonl, summary.json and server checkpoints.
`fedtune_cv.py` is the same program for image tasks.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")  # before torch is imported
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft, not actionable

import argparse
import logging
import os
import sys

import torch

from sub_model_construct.cli import FETCH_HINT, UsageError, run_cli, setup_logging, str2bool

logger = logging.getLogger("fedtune")
METHODS = ("pft", "peft", "fedot")


def build_parser(modality: str) -> argparse.ArgumentParser:
    image = modality == "image"
    p = argparse.ArgumentParser(
        description=f"Federated proxy fine-tuning ({'image' if image else 'text'} tasks; spec §4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    g = p.add_argument_group("models and method")
    g.add_argument("--model_checkpoint", required=True, help="FM folder (transformers format)")
    g.add_argument(
        "--sub_model_checkpoint", default=None, help="sub-FM folder from distill.py (pft; optional for fedot)"
    )
    g.add_argument(
        "--method",
        default="peft",
        choices=METHODS,
        help="pft = FedPFT, peft = FedPETuning (LoRA on the full FM), fedot = FedOT (layer-drop emulator)",
    )
    g.add_argument(
        "--emulator_layers",
        type=int,
        default=None,
        help="fedot without --sub_model_checkpoint: middle layers kept by uniform layer drop "
        "(default: half of the middle layers)",
    )
    g.add_argument(
        "--adapter_layers",
        type=int,
        nargs=2,
        default=[1, 1],
        metavar=("BOTTOM", "TOP"),
        help="fedot: FM layers at the bottom/top kept whole and tuned (the offsite-tuning adapters)",
    )
    g = p.add_argument_group("task and data")
    g.add_argument("--task_name", required=True, help="sst2, qnli, mnli, qqp, ..., bbc (text); any name (image)")
    g.add_argument("--dataset_path", default="../datasets/cifar-10" if image else "../datasets/glue")
    g.add_argument("--dataset_label_name", default="label", help="label column (CIFAR-100: fine_label)")
    g.add_argument("--max_length", type=int, default=512, help="tokenizer truncation length")
    if image:
        g.add_argument(
            "--image_size",
            type=int,
            default=None,
            help="train/eval resolution (default: the FM's; the reference used 384 with interpolated "
            "position embeddings)",
        )
        g.add_argument("--hflip", type=str2bool, default=True, help="random horizontal flips in client training")
        g.add_argument(
            "--min_crop_scale",
            type=float,
            default=0.08,
            help="smallest area share of RandomResizedCrop in client training (0.08 = the reference)",
        )
        g.add_argument("--distill_dataset_path", default="../datasets/IMAGENET", help="public image corpus (alignment)")
    else:
        g.add_argument("--distill_dataset1_path", default="../datasets/bookcorpus", help="public corpus ('' to skip)")
        g.add_argument("--distill_dataset2_path", default="../datasets/wikipedia", help="public corpus ('' to skip)")
        g.add_argument("--distill_dataset2_config", default="20220301.en")
        g.add_argument("--align_block_size", type=int, default=512, help="tokens per public-corpus block")
    g.add_argument("--cache_dir", default="./.cache", help="tokenised task/corpus cache")
    g = p.add_argument_group("federation (spec §4.1, §4.3, §4.5, §4.7)")
    g.add_argument("--seed", type=int, default=1206)
    g.add_argument("--num_clients", type=int, default=100)
    g.add_argument("--partitioner", default="iid", choices=("iid", "dir", "div"))
    g.add_argument("--dir_alpha", type=float, default=1.0, help="Dirichlet Dir(alpha*p) concentration")
    g.add_argument("--diversity", type=float, default=1.0, help="fraction of classes per client (div)")
    g.add_argument("--imbalance", type=float, default=0.0, help="client data-size imbalance (0 = equal)")
    g.add_argument(
        "--partition_seed",
        type=int,
        default=None,
        help="seed of the client partition (default: --seed); the partition cache is keyed by it",
    )
    g.add_argument(
        "--train_holdout",
        type=float,
        default=0.0,
        help="share of each client's data held out as its local validation set (not trained on)",
    )
    g.add_argument(
        "--test_holdout",
        type=float,
        default=0.0,
        help="share of each server eval split used as a validation split, evaluated instead (server_val)",
    )
    g.add_argument("--num_rounds", type=int, default=10)
    g.add_argument("--proportion", type=float, default=0.2, help="fraction of clients per round")
    g.add_argument("--sample", default="uniform", choices=("uniform", "full", "md"))
    g.add_argument(
        "--aggregate",
        default="weighted",
        choices=("weighted", "uniform", "weighted_scale", "weighted_com"),
        help="weighted = FedAvg by client data size (paper); uniform = the reference's default",
    )
    g.add_argument("--pre_sample", type=str2bool, default=True, help="draws come from one seeded stream either way")
    g.add_argument("--eval_interval", type=int, default=1, help="evaluate every k rounds (and rounds 0 and R)")
    g.add_argument("--task_root", default="./task", help="where partitions are cached")
    g.add_argument("--output_root", default="./fed-result")
    g = p.add_argument_group("client training (spec §4.6, §4.8)")
    g.add_argument("--learning_rate", type=float, default=2e-5)
    g.add_argument("--lr_scheduler_type", type=int, default=0, choices=(-1, 0, 1, 2), help="across-round schedule")
    g.add_argument("--lr_decay", type=float, default=0.95)
    g.add_argument(
        "--lr_type2_reference",
        type=str2bool,
        default=False,
        help="type 2 as the reference: skip the (R-1)/R step (spec §6.6)",
    )
    g.add_argument("--num_epochs", type=float, default=1.0, help="local epochs per round")
    g.add_argument("--num_train_epochs", type=float, default=None, help="accepted; unused (as in the reference)")
    g.add_argument("--per_device_train_batch_size", type=int, default=32)
    g.add_argument("--gradient_accumulation_steps", type=int, default=4)
    g.add_argument("--per_device_eval_batch_size", type=int, default=128 if image else 16)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--lora_rank", type=int, default=4)
    g.add_argument("--lora_alpha", type=float, default=16)
    g.add_argument("--lora_dropout", type=float, default=0.1)
    g.add_argument("--bias", default="none", choices=("none", "all", "lora_only"))
    g.add_argument("--modules_to_save", nargs="*", default=["classifier"])
    g = p.add_argument_group("neuron-level alignment (spec §4.9-4.10)")
    g.add_argument("--align_interval", type=int, default=10, help="t; alignment only when 0 < t < num_rounds")
    g.add_argument("--align_epochs", type=float, default=0.01, help="fraction of a public-corpus epoch per alignment")
    g.add_argument("--align_retained_ratio", type=float, default=0.5, help="r: frozen share; updated p = 1 - r")
    g.add_argument(
        "--retained_layers_idx",
        type=int,
        nargs="*",
        default=None,
        help="optional; must equal the sub-FM's layers_retained (read from its config, spec §6.4)",
    )
    g.add_argument("--align_batch_size", type=int, default=32 if image else 16)
    g.add_argument("--align_learning_rate", type=float, default=1e-3 if image else 6e-4)
    g.add_argument("--align_warmup_ratio", type=float, default=0.048)
    g.add_argument(
        "--align_grad_accum_start",
        type=int,
        default=64 if image else 32,
        help="accumulation counter, halved before each alignment down to the floor",
    )
    g.add_argument("--align_grad_accum_min", type=int, default=8 if image else 2)
    g.add_argument(
        "--align_adapter",
        default="global",
        choices=("global", "reference"),
        help="global: teacher and student carry the aggregated adapter; reference: spec §6.5",
    )
    g = p.add_argument_group("evaluation, output, resume")
    g.add_argument("--metric_for_best_model", default=None, help="default: accuracy (MNLI: matched_accuracy)")
    g.add_argument("--eval_sub_model", type=str2bool, default=True, help="also evaluate the sub-FM each round")
    g.add_argument(
        "--resume",
        type=resume_mode,
        default=False,
        help="True: continue from the last round checkpoint; auto: skip a finished run, resume one with a "
        "checkpoint, start anything else afresh (what the table scripts use)",
    )
    g.add_argument("--overwrite", type=str2bool, default=False, help="replace an existing run folder")
    g.add_argument("--stop_after_round", type=int, default=0, help="stop after round k as if interrupted")
    g.add_argument("--cpu", type=str2bool, default=False, help="force CPU (gloo) even when a GPU is visible")
    g = p.add_argument_group("accepted for compatibility with the reference command lines")
    for flag, kind, default in (
        ("--fp16", str2bool, False),
        ("--save_client", str2bool, False),
        ("--dataloader_num_workers", int, 0),
        ("--remove_unused_columns", str2bool, False),
        ("--push_to_hub", str2bool, False),
        ("--num_virtual_tokens", int, None),
        ("--tuning_method", str, "lora"),
        ("--evaluate_path", str, None),
    ):
        g.add_argument(flag, type=kind, default=default, help="no effect")
    g.add_argument("--label_names", nargs="*", default=["labels"], help="no effect")
    a(
        "--max_eval_samples",
        type=int,
        default=0,
        help="evaluate on a seeded random subset of N examples of each split (0 = all)",
    )
    return p


def resume_mode(value: str) -> bool | str:
    """--resume: a boolean, or "auto" (skip finished, resume interrupted, start the rest)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected True/False/auto, got {value!r}") from None


def check_args(args) -> None:
    if not 0 < args.proportion <= 1:
        raise UsageError(f"--proportion must be in (0, 1], got {args.proportion}")
    if not 0 <= args.align_retained_ratio < 1:
        raise UsageError(f"--align_retained_ratio must be in [0, 1), got {args.align_retained_ratio}")
    if args.lora_rank <= 0:
        raise UsageError(f"--lora_rank must be positive, got {args.lora_rank}")
    if args.num_rounds < 1 or args.num_clients < 1:
        raise UsageError("--num_rounds and --num_clients must be at least 1")
    for name in ("train_holdout", "test_holdout"):
        if not 0 <= getattr(args, name) < 1:
            raise UsageError(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if args.tuning_method != "lora":
        raise UsageError("only --tuning_method lora is implemented (as in the reference)")
    if args.fp16:
        raise UsageError("--fp16 is not supported; the runs are float32")
    for name in (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "per_device_eval_batch_size",
        "align_batch_size",
    ):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if not os.path.isfile(os.path.join(args.model_checkpoint, "config.json")):
        raise UsageError(
            f"model checkpoint folder {args.model_checkpoint} not found or not a transformers folder; {FETCH_HINT}"
        )
    if args.method == "pft" and not args.sub_model_checkpoint:
        raise UsageError("--method pft needs --sub_model_checkpoint (build one with sub_model_construct/distill.py)")
    if args.sub_model_checkpoint and args.method != "peft" and not os.path.isdir(args.sub_model_checkpoint):
        raise UsageError(
            f"sub-FM folder {args.sub_model_checkpoint} not found; build it with sub_model_construct/distill.py"
        )


def main(argv: list[str] | None = None, modality: str = "text") -> int:
    args = build_parser(modality).parse_args(argv)
    check_args(args)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    args.num_processes = accelerator.num_processes
    setup_logging(accelerator.is_main_process)
    from federated_proxy_finetuning.assemble import build_server

    server = build_server(args, accelerator, modality)
    if server is None:  # --resume auto on a finished run
        return 0
    summary = server.run()
    if accelerator.is_main_process and "final" in summary:
        key = summary["metric"]
        print(
            f"{args.method}: final {key} {summary['final'][key]:.4f} (round {summary['final_round']}), "
            f"best {summary['best_metric']:.4f} (round {summary['best_round']}); results in {server.s.run.path}"
        )
    accelerator.wait_for_everyone()
    return 0


def entry(modality: str) -> None:
    from federated_proxy_finetuning.fedparty import FederatedError
    from sub_model_construct.sub_model import SubModelError

    def guarded() -> int:
        try:
            return main(sys.argv[1:], modality)
        except (SubModelError, FederatedError) as exc:
            raise UsageError(str(exc)) from exc

    run_cli(guarded)


if __name__ == "__main__":
    entry("text")
