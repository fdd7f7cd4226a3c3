"""Settings of distill.py / distill_vit.py (spec §2-§3): every flag with its meaning, help and checked range, as one
frozen dataclass built with the typed-settings fields of `typed_settings`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .cli import str2bool
from .typed_settings import (
    AT_LEAST_ONE,
    EPOCHS,
    IMAGE_SIZE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SCHEDULES,
    SEED,
    STEPS_OR_SHARE,
    TOKENS,
    Range,
    adapter_layers_option,
    option,
)


@dataclass(frozen=True)
class DistillSettings:
    """Construct a sub-FM and distil it from its FM (spec §2-§3)"""

    model_checkpoint: str = option(help="FM folder (transformers format)")
    layers_retained: tuple[int, ...] = option(
        (), "layers whose FFN stays whole (paper: 0 11)", parse=int, nargs="*", valid=NON_NEGATIVE
    )
    emulator_layers: int = option(
        0,
        "FedOT instead of FedPFT: keep this many middle layers by uniform layer drop (0 = FFN compression)",
        valid=NON_NEGATIVE,
    )
    adapter_layers: tuple[int, int] = adapter_layers_option(
        "with --emulator_layers: bottom/top layers kept whole as the offsite-tuning adapters"
    )
    intermediate_rank: int = option(
        1024, "FFN neurons kept per compressed layer, D' (paper: 768; at most the FFN width)", valid=AT_LEAST_ONE
    )
    qk_rank: int | None = option(
        None, "must equal the hidden size: attention is not compressed (spec §2.4)", parse=int, valid=AT_LEAST_ONE
    )
    saliency: str = option(
        "weight",
        "how a compressed FFN's neurons are ranked: weight (spec §2.2; for a gated FFN the norm of its gate and up "
        "rows and down column) or activation (||W_out[:, j]|| * sqrt(E[h_j^2]) over public-corpus tokens, as "
        "FLAP/Wanda do; the folder name gets -act)",
        choices=("weight", "activation"),
    )
    saliency_blocks: int = option(
        64, "with --saliency activation: public-corpus training items the activations are averaged over",
        valid=AT_LEAST_ONE,
    )  # fmt: skip
    distill: bool = option(False, "run layer-level distillation after construction")
    split_distill: bool = option(False, "accepted for compatibility; no effect (spec §6.2)")
    sub_model_dir: str = option("./sub_model", "where sub-FM folders are written")
    output_dir: str | None = option(None, "override the output folder (distilled, or undistilled without --distill)")
    overwrite: bool = option(False, "replace an existing distilled output folder")
    distill_dataset_path: str = option(
        "../datasets/IMAGENET", "image corpus (HF image folder or ImageFolder)", modality="image"
    )
    image_size: int | None = option(
        None,
        "crop size (default: the FM config's image_size; at least its patch size)",
        parse=int,
        valid=IMAGE_SIZE,
        modality="image",
    )
    dataset1_path: str = option("../datasets/bookcorpus", "first text corpus ('' to skip)", modality="text")
    dataset2_path: str = option("../datasets/wikipedia", "second text corpus ('' to skip)", modality="text")
    dataset1_config: str | None = option(None, "load_dataset config name of the first corpus", modality="text")
    dataset2_config: str = option("20220301.en", "load_dataset config name of the second corpus", modality="text")
    block_size: int = option(
        512,
        "tokens per training block (spec §3.1; at most the FM's max_position_embeddings)",
        valid=AT_LEAST_ONE,
        modality="text",
    )
    max_seq_length: int = option(
        512, "each corpus example is truncated to this many tokens first", valid=TOKENS, modality="text"
    )
    distill_alpha: float = option(1.0, "weight of the FFN weight term (spec §3.3)", valid=NON_NEGATIVE)
    weight_term_grad: bool = option(
        True, "weight term carries gradients (paper intent); False = reference (logged only, spec §6.1)"
    )
    student_dropout: bool = option(
        False, "keep the student's FFN dropout active as the reference does (spec §3.2, §6.13)"
    )
    per_device_train_batch_size: int = option(32, "micro-batch per process", valid=AT_LEAST_ONE)
    per_device_eval_batch_size: int = option(32, "held-out evaluation batch", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = option(4, "micro-batches per step and process", valid=AT_LEAST_ONE)
    learning_rate: float = option(1e-4, "peak learning rate", valid=POSITIVE)
    lr_scheduler_type: str = option("cosine", "learning-rate schedule over the steps", choices=SCHEDULES)
    warm_up_ratio: float = option(0.06, "warm-up share of the steps", valid=PROBABILITY)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)", valid=NON_NEGATIVE)
    max_grad_norm: float = option(1.0, "gradient clipping (0 = none)", valid=NON_NEGATIVE)
    distill_epoch: float = option(1.0, "epochs over the corpus", valid=EPOCHS)
    max_steps: int = option(0, "stop after this many optimiser steps (0 = from epochs)", valid=NON_NEGATIVE)
    logging_steps: float = option(
        0.05, "log every N steps, or this fraction of all steps if < 1 (0 = never)", valid=STEPS_OR_SHARE
    )
    save_steps: float = option(
        0.1, "checkpoint every N steps, or this fraction if < 1 (0 = never)", valid=STEPS_OR_SHARE
    )
    save_total_limit: int = option(
        0, "keep only the newest N checkpoint-<step> folders, removing older ones (0 = keep all)", valid=NON_NEGATIVE
    )
    keep_checkpoints: bool = option(
        True, "keep the checkpoint-<step> folders once the distilled sub-FM is written (False: remove them then)"
    )
    resume_from_checkpoint: str | None = option(None, "a checkpoint-<step> folder, or True for the latest")
    eval_blocks: int = option(64, "held-out corpus items for the before/after MSE report", valid=NON_NEGATIVE)
    seed: int = option(123, "seed of the corpus order, crops and initial draws", valid=SEED)
    bf16: bool = option(False, "bfloat16 autocast (GPU)")
    fp16: bool = option(False, "not supported: use --bf16")
    num_proc: int | None = option(None, "processes for corpus tokenisation", parse=int, valid=Range(1, 256))
    cache_dir: str | None = option(None, "cache for tokenised corpus blocks (default: <sub_model_dir>/.cache)")
    cpu: bool = option(False, "force CPU (gloo) even when a GPU is visible")

    @property
    def activation_saliency(self) -> bool:
        """Neurons ranked by their activations on the public corpus (read before the sub-FM is built)."""
        return self.saliency == "activation"

    @property
    def resuming(self) -> bool:
        """--resume_from_checkpoint asks to resume unless it is absent, empty or a boolean "no" (False, 0, ...)."""
        value = self.resume_from_checkpoint
        if not value:
            return False
        try:
            return str2bool(value)
        except argparse.ArgumentTypeError:
            return True  # a checkpoint folder

    @property
    def resume_latest(self) -> bool:
        """--resume_from_checkpoint True (or another "yes"): the latest checkpoint; a path names one."""
        try:
            return str2bool(self.resume_from_checkpoint)
        except argparse.ArgumentTypeError:
            return False
