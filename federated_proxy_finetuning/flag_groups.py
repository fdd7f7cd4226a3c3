"""The flag groups of a federated run's settings (spec §4.1): LoRA, the client partition, neuron-level alignment
and the reference's compatibility flags, each a frozen dataclass that `settings.FedSettings` holds as one field.
"""

from __future__ import annotations

from dataclasses import dataclass

from sub_model_construct.typed_settings import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SEED,
    SHARE,
    Range,
    option,
)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the attention projections (and, as an option, the FFN), plus the head trained whole (spec §4.4)"""

    rank: int = option(4, "LoRA rank (at most the FM's hidden size)", valid=AT_LEAST_ONE, flag="lora_rank")
    alpha: float = option(16, "LoRA alpha (scaling alpha / rank)", parse=float, valid=POSITIVE, flag="lora_alpha")
    dropout: float = option(0.1, "dropout on the LoRA input", valid=PROBABILITY, flag="lora_dropout")
    bias: str = option("none", "which biases train", choices=("none", "all", "lora_only"))
    ffn: bool = option(
        False,
        "LoRA also on the FFN matrices (gate/up/down; intermediate/output); on a sub-FM's cut FFN it covers the "
        "kept neurons and plugs into the FM at those neurons",
        flag="lora_ffn",
    )
    modules_to_save: tuple[str, ...] | None = option(
        None, "modules trained whole and communicated (default: the family's head)", nargs="*"
    )


@dataclass(frozen=True)
class PartitionSettings:
    """Client partition (spec §4.3, flgo) and the local/server holdouts (spec §4.1)"""

    partitioner: str = option("iid", "iid, Dirichlet (dir) or class diversity (div)", choices=("iid", "dir", "div"))
    dir_alpha: float = option(1.0, "Dirichlet Dir(alpha*p) concentration", valid=Range(0, 10**6, low_open=True))
    diversity: float = option(1.0, "fraction of classes per client (div)", valid=Range(0, 1, low_open=True))
    imbalance: float = option(0.0, "client data-size imbalance (0 = equal)", valid=PROBABILITY)
    seed: int | None = option(
        None,
        "seed of the client partition (default: --seed); the partition cache is keyed by it",
        parse=int,
        valid=SEED,
        flag="partition_seed",
    )
    train_holdout: float = option(
        0.0, "share of each client's data held out as its local validation set (not trained on)", valid=SHARE
    )
    test_holdout: float = option(
        0.0, "share of each server eval split used as a validation split, evaluated instead (server_val)", valid=SHARE
    )
    task_root: str = option("./task", "where partitions are cached")


@dataclass(frozen=True)
class AlignSettings:
    """Neuron-level alignment on the public corpus (spec §4.9-4.10)"""

    interval: int = option(10, "t; alignment only when 0 < t < num_rounds", valid=NON_NEGATIVE, flag="align_interval")
    epochs: float = option(
        0.01,
        "fraction of a public-corpus epoch per alignment (below 0.001: one step)",
        valid=Range(0, 1000),
        flag="align_epochs",
    )
    retained_ratio: float = option(0.5, "r: frozen share; updated p = 1 - r", valid=SHARE, flag="align_retained_ratio")
    retained_layers_idx: tuple[int, ...] | None = option(
        None,
        "optional; must equal the sub-FM's layers_retained (read from its config, spec §6.4)",
        parse=int,
        nargs="*",
        valid=NON_NEGATIVE,
    )
    batch_size: int = option(16, "per-device batch of public-corpus items", valid=AT_LEAST_ONE, flag="align_batch_size")
    learning_rate: float = option(6e-4, "alignment learning rate", valid=POSITIVE, flag="align_learning_rate")
    warmup_ratio: float = option(0.048, "linear warm-up share", valid=PROBABILITY, flag="align_warmup_ratio")
    grad_accum_start: int = option(
        32,
        "accumulation counter, halved before each alignment down to the floor",
        valid=AT_LEAST_ONE,
        flag="align_grad_accum_start",
    )
    grad_accum_min: int = option(
        2, "floor of the accumulation counter", valid=AT_LEAST_ONE, flag="align_grad_accum_min"
    )
    activation_threshold: float | None = option(
        None,
        "an FFN activation of magnitude below this counts as inactive (0: exactly zero, the paper's rule); default: "
        "0 for one-input FFNs, 0.01 for gated ones (SiLU never gives exact zeros)",
        parse=float,
        valid=NON_NEGATIVE,
        flag="align_activation_threshold",
    )
    adapter: str = option(
        "global",
        "global: teacher and student carry the aggregated adapter; reference: spec §6.5",
        choices=("global", "reference"),
        flag="align_adapter",
    )
    text_corpus_1: str = option(
        "../datasets/bookcorpus", "public corpus ('' to skip)", flag="distill_dataset1_path", modality="text"
    )
    text_corpus_2: str = option(
        "../datasets/wikipedia", "public corpus ('' to skip)", flag="distill_dataset2_path", modality="text"
    )
    text_corpus_2_config: str = option("20220301.en", "", flag="distill_dataset2_config", modality="text")
    block_size: int = option(
        512,
        "tokens per public-corpus block (at most the FM's max_position_embeddings)",
        valid=AT_LEAST_ONE,
        flag="align_block_size",
        modality="text",
    )
    image_corpus: str = option(
        "../datasets/IMAGENET", "public image corpus (alignment)", flag="distill_dataset_path", modality="image"
    )


@dataclass(frozen=True)
class ReferenceFlags:
    """Accepted for compatibility with the reference command lines (no effect)"""

    fp16: bool = option(False, "refused: the runs are float32")
    save_client: bool = option(False, "no effect")
    dataloader_num_workers: int = option(0, "no effect", valid=NON_NEGATIVE)
    remove_unused_columns: bool = option(False, "no effect")
    push_to_hub: bool = option(False, "no effect")
    num_virtual_tokens: int | None = option(None, "no effect", parse=int, valid=AT_LEAST_ONE)
    tuning_method: str = option("lora", "only lora is implemented (as in the reference)", choices=("lora",))
    evaluate_path: str | None = option(None, "no effect")
    label_names: tuple[str, ...] = option(("labels",), "no effect", nargs="*")
    num_train_epochs: float | None = option(
        None, "accepted; unused (as in the reference)", parse=float, valid=NON_NEGATIVE
    )
