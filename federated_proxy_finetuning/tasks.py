"""Downstream tasks (spec §4.2): GLUE-style text classification, the embedded BBC task, image classification.
Tokenisation happens once and is cached; metrics come from scikit-learn (spec §4.11)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import datasets
from sub_model_construct.corpus import image_transform

logger = logging.getLogger(__name__)


class TaskError(ValueError):
    """A task that is unknown or whose data is missing or malformed."""


@dataclass(frozen=True)
class TextTaskSpec:
    keys: tuple[str, ...]  # text columns (one or a pair)
    eval_splits: dict[str, str]  # metric prefix key -> split name
    metrics: tuple[str, ...] = ("accuracy",)


TEXT_TASKS: dict[str, TextTaskSpec] = {
    "sst2": TextTaskSpec(("sentence",), {"": "validation"}),
    "cola": TextTaskSpec(("sentence",), {"": "validation"}),
    "qnli": TextTaskSpec(("question", "sentence"), {"": "validation"}),
    "rte": TextTaskSpec(("sentence1", "sentence2"), {"": "validation"}),
    "wnli": TextTaskSpec(("sentence1", "sentence2"), {"": "validation"}),
    "mrpc": TextTaskSpec(("sentence1", "sentence2"), {"": "validation"}, ("accuracy", "f1")),
    "qqp": TextTaskSpec(("question1", "question2"), {"": "validation"}, ("accuracy", "f1")),
    "mnli": TextTaskSpec(
        ("premise", "hypothesis"), {"matched": "validation_matched", "mismatched": "validation_mismatched"}
    ),
    # embedded default: BBC News headlines, 5 topics (ARCHITECTURE §4)
    "bbc": TextTaskSpec(("text",), {"": "validation"}),
}


@dataclass
class TaskData:
    name: str
    modality: str
    train: datasets.Dataset
    eval_splits: dict[str, datasets.Dataset]
    num_labels: int
    id2label: dict[int, str]
    label2id: dict[str, int]
    train_labels: list[int]
    metric_names: tuple[str, ...]
    collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]]


def eval_prefix(split_key: str) -> str:
    """ "" -> "eval_", "matched" -> "eval_matched_" (spec §4.11)."""
    return f"eval_{split_key}_" if split_key else "eval_"


def compute_metrics(preds: np.ndarray, labels: np.ndarray, metric_names) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    out = {}
    for name in metric_names:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            out[name] = float(f1_score(labels, preds, average="binary" if len(set(labels.tolist())) <= 2 else "macro"))
        else:
            raise ValueError(f"unknown metric {name}")
    return out


# ----------------------------------------------------------------------------------------------- loading
def _load_dict(dataset_path: str, task_name: str) -> datasets.DatasetDict:
    """{path}/{task} save_to_disk folder, {path} itself, or load_dataset(path, task) (the reference layout)."""
    candidates = [Path(dataset_path) / task_name, Path(dataset_path)]
    for folder in candidates:
        if (folder / "dataset_dict.json").exists():
            return datasets.load_from_disk(str(folder))
    if not Path(dataset_path).exists():
        hint = " (run `bash scripts/fetch_assets.sh`)" if task_name in ("bbc", "mnist") else ""
        raise TaskError(f"dataset folder {dataset_path} not found{hint}")
    try:
        return datasets.load_dataset(dataset_path, task_name)
    except Exception as exc:  # datasets raises several types for unreadable folders
        raise TaskError(f"no dataset for task {task_name!r} under {dataset_path}: {exc}") from exc


def _label_names(split: datasets.Dataset, label: str) -> list[str]:
    feature = split.features[label]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(split[label]))
    return [str(v) for v in range(max(values) + 1)]


def _check_columns(data: datasets.DatasetDict, splits, columns, where: str) -> None:
    for split in splits:
        if split not in data:
            raise TaskError(f"{where} has no split {split!r} (has {', '.join(data)})")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise TaskError(f"{where} split {split!r} lacks column(s) {', '.join(missing)}")


def load_text_task(
    task_name: str,
    dataset_path: str,
    tokenizer,
    max_length: int = 512,
    cache_dir: str | None = None,
    label_name: str = "label",
) -> TaskData:
    if task_name not in TEXT_TASKS:
        raise TaskError(f"unknown text task {task_name!r}; supported: {', '.join(sorted(TEXT_TASKS))}")
    spec = TEXT_TASKS[task_name]
    raw = _load_dict(dataset_path, task_name)
    splits = ["train", *spec.eval_splits.values()]
    _check_columns(raw, splits, [*spec.keys, label_name], f"dataset {dataset_path} ({task_name})")
    names = _label_names(raw["train"], label_name)
    raw = datasets.DatasetDict({s: raw[s] for s in splits})
    tokenized = _tokenize_cached(raw, spec.keys, label_name, tokenizer, max_length, cache_dir, task_name)
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    return TaskData(
        name=task_name,
        modality="text",
        train=tokenized["train"],
        eval_splits={k: tokenized[s] for k, s in spec.eval_splits.items()},
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        train_labels=list(tokenized["train"]["labels"]),
        metric_names=spec.metrics,
        collate_fn=collator,
    )


def _tokenize_cached(raw, keys, label_name, tokenizer, max_length, cache_dir, task_name) -> datasets.DatasetDict:
    def encode(batch):
        return tokenizer(*[batch[k] for k in keys], truncation=True, max_length=max_length)

    fingerprint = "-".join(raw[s]._fingerprint for s in raw)
    key = hashlib.sha1(f"{fingerprint}-{tokenizer.name_or_path}-{len(tokenizer)}-{max_length}".encode()).hexdigest()[
        :12
    ]
    target = (
        Path(cache_dir) / f"{task_name}-{os.path.basename(str(tokenizer.name_or_path))}-{max_length}-{key}"
        if cache_dir
        else None
    )
    if target is not None and (target / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(target))
    keep = {label_name}
    out = raw.map(
        encode,
        batched=True,
        desc=f"tokenising {task_name}",
        remove_columns=[c for c in raw["train"].column_names if c not in keep],
    )
    if label_name != "labels":
        out = out.rename_column(label_name, "labels")
    if target is not None:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        out.save_to_disk(str(tmp))
        os.replace(tmp, target)
        out = datasets.load_from_disk(str(target))
    return out


# ----------------------------------------------------------------------------------------------- images
IMAGE_COLUMNS = ("image", "img")


def load_image_task(
    dataset_path: str,
    image_processor_or_stats,
    image_size: int,
    label_name: str = "label",
    image_column: str | None = None,
    hflip: bool = True,
    num_channels: int | None = None,
) -> TaskData:
    """Train split for clients, `test` (else `validation`) for the server (spec §4.2 CV)."""
    name = os.path.basename(os.path.normpath(dataset_path))
    if not Path(dataset_path).exists():
        raise TaskError(f"dataset folder {dataset_path} not found (embedded MNIST: run `bash scripts/fetch_assets.sh`)")
    try:
        raw = (
            datasets.load_from_disk(dataset_path)
            if (Path(dataset_path) / "dataset_dict.json").exists()
            else datasets.load_dataset(dataset_path)
        )
    except Exception as exc:
        raise TaskError(f"{dataset_path} is not a readable image dataset: {exc}") from exc
    eval_split = "test" if "test" in raw else "validation"
    column = image_column or next((c for c in IMAGE_COLUMNS if "train" in raw and c in raw["train"].column_names), None)
    if column is None:
        raise TaskError(f"{dataset_path} has no image column (looked for {', '.join(IMAGE_COLUMNS)})")
    _check_columns(raw, ["train", eval_split], [column, label_name], f"dataset {dataset_path}")
    stats = image_processor_or_stats
    mean = stats["image_mean"] if isinstance(stats, dict) else stats.image_mean
    std = stats["image_std"] if isinstance(stats, dict) else stats.image_std
    channels = num_channels or (stats.get("num_channels", len(mean)) if isinstance(stats, dict) else len(mean))
    mean, std = list(mean)[:channels], list(std)[:channels]
    names = _label_names(raw["train"], label_name)
    train_tf = image_transform(image_size, mean, std, channels, train=True, hflip=hflip)
    eval_tf = image_transform(image_size, mean, std, channels, train=False)

    def apply(transform):
        def batch_transform(batch):
            return {"pixel_values": [transform(img) for img in batch[column]], "labels": batch[label_name]}

        return batch_transform

    train = raw["train"].with_transform(apply(train_tf))
    evaluation = raw[eval_split].with_transform(apply(eval_tf))

    def collate(rows):
        return {
            "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }

    return TaskData(
        name=name,
        modality="image",
        train=train,
        eval_splits={"": evaluation},
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        train_labels=list(raw["train"][label_name]),
        metric_names=("accuracy",),
        collate_fn=collate,
    )
