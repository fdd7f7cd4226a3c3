"""Settings of a federated run (spec §4.1): every flag of the reference's fedtune.py / fedtune_cv.py with its name,
meaning, help and checked range, as frozen dataclasses. Derived facts (is this run aligning? the effective batch,
the run name) are properties computed once, here and nowhere else.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sub_model_construct.cli import FETCH_HINT, UsageError, str2bool
from sub_model_construct.typed_settings import (
    AT_LEAST_ONE,
    EPOCHS,
    IMAGE_SIZE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    TOKENS,
    Range,
    adapter_layers_option,
    group,
    option,
)

from .flag_groups import AlignSettings, LoraSettings, PartitionSettings, ReferenceFlags
from .methods import METHODS, Method

ROUNDS = Range(1, 100_000)  # the client schedule of every round is drawn at start-up


def resume_mode(value: str) -> bool | str:
    """--resume: a boolean, or "auto" (skip finished, resume interrupted, start the rest)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected True/False/auto, got {value!r}") from None


@dataclass(frozen=True)
class FedSettings:
    """Models, task, federation and client training (spec §4.1, §4.5-4.8)"""

    model_checkpoint: str = option(help="FM folder (transformers format)")
    task_name: str = option(help="sst2, qnli, mnli, qqp, ..., bbc (text); any name (image)")
    sub_model_checkpoint: str | None = option(None, "sub-FM folder from distill.py (pft; optional for fedot)")
    method: str = option(
        "peft",
        "pft = FedPFT, peft = FedPETuning (LoRA on the full FM), fedot = FedOT (layer-drop emulator)",
        choices=tuple(METHODS),
    )
    emulator_layers: int | None = option(
        None,
        "fedot without --sub_model_checkpoint: middle layers kept by uniform layer drop "
        "(default: half of the middle layers)",
        parse=int,
        valid=AT_LEAST_ONE,
    )
    adapter_layers: tuple[int, int] = adapter_layers_option(
        "fedot: FM layers at the bottom/top kept whole and tuned (the offsite-tuning adapters)"
    )
    dataset_path: str = option("../datasets/glue", "task data folder")
    dataset_label_name: str = option("label", "label column (CIFAR-100: fine_label)")
    max_length: int = option(
        512, "tokenizer truncation length (capped at the FM's max_position_embeddings)", valid=TOKENS
    )
    image_size: int | None = option(
        None,
        "train/eval resolution (default: the FM's; at least its patch size; the reference used 384 with "
        "interpolated position embeddings)",
        parse=int,
        valid=IMAGE_SIZE,
        modality="image",
    )
    hflip: bool = option(True, "random horizontal flips in client training", modality="image")
    min_crop_scale: float = option(
        0.08,
        "smallest area share of RandomResizedCrop in client training (0.08 = the reference)",
        valid=Range(0, 1, low_open=True),
        modality="image",
    )
    cache_dir: str = option("./.cache", "tokenised task/corpus cache")
    max_eval_samples: int = option(
        0, "evaluate on a seeded random subset of N examples of each split (0 = all)", valid=NON_NEGATIVE
    )
    seed: int = option(1206, "seed of sampling, client training, alignment (and the partition by default)", valid=SEED)
    num_clients: int = option(100, "number of clients (at most the training examples)", valid=AT_LEAST_ONE)
    num_rounds: int = option(10, "communication rounds R", valid=ROUNDS)
    proportion: float = option(0.2, "fraction of clients per round", valid=Range(0, 1, low_open=True))
    sample: str = option("uniform", "client sampling", choices=("uniform", "full", "md"))
    aggregate: str = option(
        "weighted",
        "weighted = FedAvg by client data size (paper); uniform = the reference's default",
        choices=("weighted", "uniform", "weighted_scale", "weighted_com"),
    )
    pre_sample: bool = option(True, "draws come from one seeded stream either way")
    eval_interval: int = option(1, "evaluate every k rounds (and rounds 0 and R)", valid=NON_NEGATIVE)
    eval_round_zero: bool = option(
        True, "evaluate the untrained model at round 0 (the same model for every method and partition of a seed)"
    )
    output_root: str = option("./fed-result", "where run folders are written")
    learning_rate: float = option(2e-5, "client learning rate eta0", valid=POSITIVE)
    lr_scheduler_type: int = option(0, "across-round schedule (spec §4.8)", choices=(-1, 0, 1, 2))
    lr_decay: float = option(0.95, "per-round decay factor of type 0", valid=Range(0, 1, low_open=True))
    lr_type2_reference: bool = option(False, "type 2 as the reference: skip the (R-1)/R step (spec §6.6)")
    num_epochs: float = option(1.0, "local epochs per round", valid=EPOCHS)
    per_device_train_batch_size: int = option(32, "client micro-batch", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = option(4, "micro-batches per step and process", valid=AT_LEAST_ONE)
    per_device_eval_batch_size: int = option(16, "evaluation batch", valid=AT_LEAST_ONE)
    max_grad_norm: float = option(1.0, "gradient clipping of clients and alignment (0 = none)", valid=NON_NEGATIVE)
    metric_for_best_model: str | None = option(None, "default: accuracy (MNLI: matched_accuracy)")
    eval_sub_model: bool = option(True, "also evaluate the sub-FM each round")
    resume: bool | str = option(
        False,
        "True: continue from the last round checkpoint; auto: skip a finished run, resume one with a "
        "checkpoint, start anything else afresh (what the table scripts use)",
        parse=resume_mode,
    )
    overwrite: bool = option(False, "replace an existing run folder")
    stop_after_round: int = option(
        0, "stop after round k as if interrupted (0 = never; at most --num_rounds)", valid=NON_NEGATIVE
    )
    cpu: bool = option(False, "force CPU (gloo) even when a GPU is visible")
    num_processes: int = option(1, command_line=False)  # filled in by the entry point from accelerate
    lora: LoraSettings = group(LoraSettings)
    partition: PartitionSettings = group(PartitionSettings)
    align: AlignSettings = group(AlignSettings)
    reference: ReferenceFlags = group(ReferenceFlags)

    # ------------------------------------------------------------------ derived facts
    @cached_property
    def kind(self) -> Method:
        return METHODS[self.method]

    @cached_property
    def aligning(self) -> bool:
        """Neuron-level alignment happens in this run: FedPFT with 0 < t < R (spec §6.9)."""
        return self.kind.aligns and 0 < self.align.interval < self.num_rounds

    def aligns_in(self, round_index: int) -> bool:
        return self.aligning and round_index % self.align.interval == 0

    def evaluates_in(self, round_index: int) -> bool:
        interval = self.eval_interval
        if round_index == 0:
            return interval > 0 and self.eval_round_zero
        return interval > 0 and (round_index % interval == 0 or round_index == self.num_rounds)

    @cached_property
    def effective_batch_size(self) -> int:
        """A client step's batch: per device x processes x accumulation, the reference's meaning (ARCHITECTURE §3)."""
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @cached_property
    def partition_seed(self) -> int:
        return self.seed if self.partition.seed is None else self.partition.seed

    @cached_property
    def run_name(self) -> str:
        """Run folder name from the key hyper-parameters (spec §4.12 pattern, with the effective batch)."""
        a = self.align
        name = (
            f"{self.method}-lr{self.learning_rate}-lst{self.lr_scheduler_type}-bs{self.effective_batch_size}"
            f"-e{self.num_epochs}-rounds{self.num_rounds}-proportion{self.proportion}-lora-r{self.lora.rank}"
            f"-alpha{self.lora.alpha}-align{self.aligning}-ai{a.interval}-ae{a.epochs}-arr{a.retained_ratio}"
        )
        if self.lora.ffn:  # a different adapter: its own folder (names without it stay as they were)
            name += "-loraffn"
        p = self.partition
        if p.partitioner != "iid":
            name += f"-{p.partitioner}{p.dir_alpha if p.partitioner == 'dir' else p.diversity}"
        return name + f"-seed{self.seed}"

    @cached_property
    def run_path(self) -> Path:
        """The run folder: `<output_root>/<task>/<client model>/<run name>` (spec §4.12)."""
        return Path(self.output_root) / self.task_name / self.model_name / self.run_name

    @cached_property
    def model_name(self) -> str:
        """The run folder's model level (spec §4.12): the client model's folder name, the FM's for FedPETuning."""
        return self.kind.client.folder_name(self.model_checkpoint, self.sub_model_checkpoint)

    @cached_property
    def client_model_distilled(self) -> bool | None:
        """FedPFT_N/_D and FedOT w/o KD use an undistilled client model (spec §4.13): say which this run had."""
        return self.kind.client.distilled(self.sub_model_checkpoint)

    def check_inputs(self) -> None:
        """Refusals that need more than one field or the file system (before anything is written)."""
        if self.reference.tuning_method != "lora":
            raise UsageError("only --tuning_method lora is implemented (as in the reference)")
        if self.reference.fp16:
            raise UsageError("--fp16 is not supported; the runs are float32")
        if not os.path.isfile(os.path.join(self.model_checkpoint, "config.json")):
            raise UsageError(
                f"model checkpoint folder {self.model_checkpoint} not found or not a transformers folder; {FETCH_HINT}"
            )
        if self.kind.client.needs_folder and not self.sub_model_checkpoint:
            raise UsageError(
                f"--method {self.method} needs --sub_model_checkpoint (build one with sub_model_construct/distill.py)"
            )
        reads = self.kind.client.reads_folder
        if self.sub_model_checkpoint and reads and not os.path.isdir(self.sub_model_checkpoint):
            raise UsageError(
                f"sub-FM folder {self.sub_model_checkpoint} not found; build it with sub_model_construct/distill.py"
            )
        if self.stop_after_round > self.num_rounds:
            raise UsageError(
                f"--stop_after_round must be in [0, --num_rounds {self.num_rounds}], got {self.stop_after_round}"
            )

    def check_model_limits(self, config, modality) -> None:
        """Ranges that depend on the FM's config (read before any weights): alignment blocks its position embeddings
        cover, a LoRA rank no larger than its hidden size, images of at least one patch (the `modality`'s limits).
        (--max_length is capped at the positions instead: a longer limit truncates nothing more.)"""
        if self.lora.rank > config.hidden_size:
            raise UsageError(f"--lora_rank must be in [1, {config.hidden_size}] for this FM, got {self.lora.rank}")
        block = ("--align_block_size", self.align.block_size) if self.aligning else None
        modality.check_limits(config, block, self.image_size)
