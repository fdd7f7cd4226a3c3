"""Public distillation corpora (spec §3.1): text cut into token blocks, or images with random crops.

Text sources may be local HF dataset folders (`save_to_disk` or `load_dataset`-able, e.g. bookcorpus and
wikipedia/20220301.en), `.txt` files (one example per non-empty line), `.jsonl` files (a `text` field per line)
or folders of such files. Images: an HF image dataset folder, or a folder of images (torchvision ImageFolder /
ImageNet layout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

import datasets

from .io import atomic_folder
from .reads import manifest_holds, reading, write_manifest

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "content", "article")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


class CorpusError(ValueError):
    """A corpus path that is missing, empty, or has no usable column."""


# ----------------------------------------------------------------------------------------------- loading
def _load_hf_folder(path: Path, config_name: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        loaded = datasets.load_dataset(str(path), config_name) if config_name else datasets.load_dataset(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    return loaded


def _load_text_files(files: Sequence[Path]) -> datasets.Dataset:
    texts: list[str] = []
    for f in files:
        if f.suffix == ".jsonl":
            with f.open(encoding="utf-8") as handle:
                for n, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CorpusError(f"{f}:{n} is not valid JSON ({exc.msg})") from exc
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise CorpusError(f"{f}:{n} has no 'text' string field")
                    texts.append(record["text"])
        else:
            texts.extend(line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    return datasets.Dataset.from_dict({"text": texts})


def load_text_corpus(path: str, config_name: str | None = None) -> datasets.Dataset:
    """One text source as a Dataset with a single `text` column."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"corpus {path} not found (embedded default: run `bash scripts/fetch_assets.sh`)")
    if p.is_file():
        if p.suffix not in (".txt", ".jsonl"):
            raise CorpusError(f"corpus file {path} must be .txt or .jsonl")
        data = _load_text_files([p])
    else:
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl"))
        is_hf = any((p / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json", "state.json"))
        has_data_files = any(f.suffix in (".parquet", ".arrow", ".csv", ".json") for f in p.rglob("*"))
        if files and not is_hf and not has_data_files:
            data = _load_text_files(files)
        else:
            try:
                data = _load_hf_folder(p, config_name)
            except CorpusError:
                raise
            except Exception as exc:  # datasets raises many types for unreadable folders
                raise CorpusError(f"corpus {path} is not a readable dataset folder: {exc}") from exc
    column = next((c for c in TEXT_COLUMNS if c in data.column_names), None)
    if column is None:
        raise CorpusError(f"corpus {path} has no text column (looked for {', '.join(TEXT_COLUMNS)})")
    data = data.select_columns([column])
    if column != "text":
        data = data.rename_column(column, "text")
    if len(data) == 0:
        raise CorpusError(f"corpus {path} is empty")
    return data


def load_text_corpora(paths: Sequence[str | None], config_names: Sequence[str | None] = ()) -> datasets.Dataset:
    """Concatenate the given sources (None entries skipped), as the reference joins bookcorpus and wikipedia."""
    names = list(config_names) + [None] * len(paths)
    parts = [load_text_corpus(p, names[i]) for i, p in enumerate(paths) if p]
    if not parts:
        raise CorpusError("no public corpus given")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def corpus_name(paths: Sequence[str | None]) -> str:
    """Name used in output folders: basenames joined by '&' (bookcorpus&wikipedia as in spec §3.5)."""
    return "&".join(os.path.basename(os.path.normpath(p)).lower() for p in paths if p)


# ----------------------------------------------------------------------------------------------- text blocks
def _blockify_batch(batch: dict, tokenizer, block_size: int, truncate_at: int) -> dict:
    encoded = tokenizer(batch["text"], truncation=True, max_length=truncate_at)
    keys = [k for k in encoded.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
    joined = {k: [t for seq in encoded[k] for t in seq] for k in keys}
    total = len(joined["input_ids"])
    if total < block_size:  # spec §3.1: a batch shorter than a block becomes one short block
        return {k: [v] for k, v in joined.items()}
    usable = (total // block_size) * block_size
    return {k: [v[i : i + block_size] for i in range(0, usable, block_size)] for k, v in joined.items()}


def text_blocks(
    corpus: datasets.Dataset,
    tokenizer,
    block_size: int = 512,
    cache_dir: str | None = None,
    map_batch_size: int = 5000,
    num_proc: int | None = None,
    truncate_at: int = 512,
) -> datasets.Dataset:
    """Tokenise each example (truncated at `truncate_at` tokens: 512 in the reference, so a Wikipedia article gives
    at most its first 512 tokens), concatenate per map batch and cut into consecutive `block_size` blocks, dropping
    the remainder (spec §3.1). Cached under `cache_dir` by content fingerprint."""
    key = hashlib.sha1(
        f"{corpus._fingerprint}-{tokenizer.name_or_path}-{len(tokenizer)}-{block_size}-{truncate_at}-{map_batch_size}".encode()
    ).hexdigest()[:16]
    target = Path(cache_dir) / f"blocks-{key}" if cache_dir else None
    if target is not None and (target / "dataset_info.json").exists() and manifest_holds(target):
        with reading(target, "corpus-block cache"):
            return datasets.load_from_disk(str(target))
    if target is not None and target.exists():
        logger.warning("corpus blocks in %s are damaged or incomplete: rebuilding them", target)
    blocks = corpus.map(
        _blockify_batch,
        batched=True,
        batch_size=map_batch_size,
        remove_columns=corpus.column_names,
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "truncate_at": truncate_at},
        num_proc=num_proc,
        desc="tokenising corpus into blocks",
    )
    if target is not None:
        with atomic_folder(target, keep_existing=not target.exists()) as tmp:  # a damaged copy is replaced
            blocks.save_to_disk(str(tmp))
            write_manifest(tmp)
        with reading(target, "corpus-block cache"):
            blocks = datasets.load_from_disk(str(target))
    return blocks


def text_collator(tokenizer):
    """Dynamic padding per batch into a plain dict of tensors (other keys, e.g. `labels`, are stacked alongside):
    corpus blocks (only the rare short ones need it, spec §3.1) and task batches (spec §4.2)."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        return dict(tokenizer.pad(rows, return_tensors="pt"))

    return collate


# ----------------------------------------------------------------------------------------------- images
def image_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_channels: int,
    train: bool,
    hflip: bool = True,
    min_crop_scale: float = 0.08,
):
    """RandomResizedCrop (area scale min_crop_scale..1; 0.08 is torchvision's and the reference's) + horizontal flip
    for training, Resize + CenterCrop otherwise; then ToTensor + Normalize. Random draws come from torch's global
    RNG, so the caller's seeding makes them reproducible."""
    from torchvision import transforms as T

    mode = "L" if num_channels == 1 else "RGB"
    steps = [T.Lambda(lambda img: img.convert(mode))]
    if train:
        steps += [T.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0))]
        steps += [T.RandomHorizontalFlip()] if hflip else []
    else:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def image_normalisation(stats, num_channels: int | None) -> tuple[list[float], list[float], int]:
    """(mean, std, channels) from a transformers image processor or a dict, fitted to the model's channel count: the
    one normalisation of distillation, alignment and the downstream task, so public-corpus and task images are
    normalised alike. One value serves every channel; RGB statistics for a one-channel model are averaged."""
    get = stats.get if isinstance(stats, dict) else lambda key, default=None: getattr(stats, key, default)
    mean, std = [float(v) for v in get("image_mean")], [float(v) for v in get("image_std")]
    channels = num_channels or get("num_channels", None) or len(mean)
    if len(mean) == channels:
        return mean, std, channels
    if len(mean) == 1:
        return mean * channels, std * channels, channels
    if channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)], 1
    raise CorpusError(f"image statistics have {len(mean)} channels but the model expects {channels}")


def fm_image_transform(processor, fm_config, image_size: int, train: bool, **augment):
    """`image_transform` normalised for the FM (its processor's statistics, its channel count)."""
    mean, std, channels = image_normalisation(processor, fm_config.num_channels)
    return image_transform(image_size, mean, std, channels, train=train, **augment)


class ImageCorpus(torch.utils.data.Dataset):
    """Images only (labels discarded, spec §3.1), transformed on access with torch's global RNG."""

    def __init__(self, source, column: str | None, transform) -> None:
        self.source, self.column, self.transform = source, column, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        item = self.source[index]
        image = item[self.column] if self.column is not None else item[0]
        return {"pixel_values": self.transform(image)}


def load_image_corpus(path: str, transform) -> ImageCorpus:
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"image corpus {path} not found (embedded default: run `bash scripts/fetch_assets.sh`)")
    has_images = any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*") if f.is_file())
    is_hf = (p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()
    if has_images and not is_hf:
        from torchvision.datasets import ImageFolder

        root = p / "train" if (p / "train").is_dir() else p
        source = ImageFolder(str(root))
        column = None
    else:
        try:
            source = _load_hf_folder(p, None)
        except Exception as exc:
            raise CorpusError(f"image corpus {path} is not a readable dataset folder: {exc}") from exc
        column = next((c for c in IMAGE_COLUMNS if c in source.column_names), None)
        if column is None:
            raise CorpusError(f"image corpus {path} has no image column (looked for {', '.join(IMAGE_COLUMNS)})")
    if len(source) == 0:
        raise CorpusError(f"image corpus {path} is empty")
    return ImageCorpus(source, column, transform)


def image_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
