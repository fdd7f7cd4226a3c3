"""Image tasks (spec §4.2 CV): an HF image dataset (CIFAR-10/100 with `img`, Flowers-102 and the embedded MNIST with
`image`) as a `TaskData`, its images transformed lazily for training and evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import datasets
from sub_model_construct.corpus import CorpusError, image_normalisation, image_transform

from .tasks import (
    EMBEDDED_TASKS,
    FETCH_HINT,
    TaskData,
    TaskError,
    check_splits,
    dataset_identity,
    encode_string_labels,
    is_saved_dict,
    label_mapping,
    label_names,
)

logger = logging.getLogger(__name__)
IMAGE_COLUMNS = ("image", "img")  # spec §4.2: `img` for CIFAR-10/100, `image` for Flowers-102 and the embedded MNIST
FLOWERS_CLASSES = 102  # spec §4.2: hard-coded for a dataset path containing "flowers"


def _load_image_dict(dataset_path: str) -> datasets.DatasetDict:
    root = Path(dataset_path)
    if not root.exists():
        hint = f"; for the embedded MNIST {FETCH_HINT}" if root.name in EMBEDDED_TASKS else ""
        raise TaskError(f"image dataset folder {root} not found{hint}")
    try:
        loaded = datasets.load_from_disk(str(root)) if is_saved_dict(root) else datasets.load_dataset(str(root))
    except Exception as exc:  # datasets raises many types for folders it cannot read
        logger.debug("loading %s failed", root, exc_info=True)
        raise TaskError(f"{root} is neither a save_to_disk DatasetDict nor loadable with load_dataset") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise TaskError(f"{root} holds a single split; expected a DatasetDict with train and test splits")
    return loaded


def _image_column(train: datasets.Dataset, requested: str | None) -> str:
    if requested is not None:
        return requested
    for name in IMAGE_COLUMNS:
        if name in train.column_names:
            return name
    typed = [n for n, f in train.features.items() if isinstance(f, datasets.Image)]
    if not typed:
        raise TaskError(f"no image column found (looked for {', '.join(IMAGE_COLUMNS)} or an Image feature)")
    return typed[0]


def _image_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long),
    }


def load_image_task(
    dataset_path: str,
    image_processor_or_stats,
    image_size: int,
    label_name: str = "label",
    image_column: str | None = None,
    hflip: bool = True,
    num_channels: int | None = None,
    min_crop_scale: float = 0.08,
) -> TaskData:
    """Train split for clients, `test` (else `validation`) for the server, transformed lazily (spec §4.2 CV).

    Train: RandomResizedCrop + RandomHorizontalFlip (`hflip`; the reference flips digits too) + ToTensor +
    Normalize; eval: Resize + CenterCrop + ToTensor + Normalize. Random draws use torch's global RNG, so the
    caller's seeding makes them reproducible. Images are converted to `num_channels` (default: the stats'
    "num_channels", else the length of image_mean)."""
    root = Path(dataset_path)
    raw = _load_image_dict(dataset_path)
    eval_split = next((s for s in ("test", "validation") if s in raw), None)
    if eval_split is None or "train" not in raw:
        raise TaskError(f"dataset {root} needs a train split and a test or validation split (it has {', '.join(raw)})")
    column = _image_column(raw["train"], image_column)
    check_splits(raw, ["train", eval_split], [column, label_name], f"dataset {root}")
    raw = encode_string_labels(raw, label_name, ["train", eval_split])
    flowers = "flowers" in str(root).lower()
    names = label_names(raw, label_name, ["train", eval_split], FLOWERS_CLASSES if flowers else 0)
    id2label, label2id = label_mapping(names)
    try:
        mean, std, channels = image_normalisation(image_processor_or_stats, num_channels)
    except CorpusError as exc:
        raise TaskError(str(exc)) from exc
    train_labels = [int(v) for v in raw["train"][label_name]]  # before the transform: no image decoding

    def lazily(transform):
        def apply(batch: dict) -> dict:
            return {"pixel_values": [transform(img) for img in batch[column]], "labels": batch[label_name]}

        return apply

    train_tf = image_transform(image_size, mean, std, channels, train=True, hflip=hflip, min_crop_scale=min_crop_scale)
    eval_tf = image_transform(image_size, mean, std, channels, train=False)
    return TaskData(
        name=root.name or str(root),
        modality="image",
        train=raw["train"].with_transform(lazily(train_tf)),
        eval_splits={"": raw[eval_split].with_transform(lazily(eval_tf))},
        num_labels=len(names),
        id2label=id2label,
        label2id=label2id,
        train_labels=train_labels,
        metric_names=("accuracy",),
        collate_fn=_image_collate,
        identity=dataset_identity(dataset_path, raw["train"]),
    )
