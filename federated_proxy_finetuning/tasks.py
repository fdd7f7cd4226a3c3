"""Downstream tasks (spec §4.2): GLUE-style text classification, the embedded BBC task and image classification,
each returned as a `TaskData` the federated server and clients share. Metrics follow spec §4.11."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import datasets
from sub_model_construct.corpus import text_collator
from sub_model_construct.io import atomic_folder
from sub_model_construct.reads import manifest_holds, reading, write_manifest

logger = logging.getLogger(__name__)

FETCH_HINT = "run `bash scripts/fetch_assets.sh` to fetch it"
EMBEDDED_TASKS = (
    "wiki-topics",
    "wiki-pairs",
    "wiki-qa",
    "bbc",
    "bbc-pairs",
    "mnist",
    "fashion-mnist",
)  # fetched by scripts/fetch_assets.sh (datasets/README.md)


LM_TASKS = ("wiki-qa",)  # instruction -> answer tasks of a causal-LM FM (lm_tasks.py)


class TaskError(ValueError):
    """A task that is unknown, or whose data is missing or malformed."""


@dataclass(frozen=True)
class TextTaskSpec:
    """One row of the text-task table (spec §4.2): text column(s), eval split(s) by metric-prefix key, metrics."""

    keys: tuple[str, ...]
    eval_splits: dict[str, str]
    metrics: tuple[str, ...] = ("accuracy",)


_VALIDATION = {"": "validation"}
TEXT_TASKS: dict[str, TextTaskSpec] = {
    "sst2": TextTaskSpec(("sentence",), _VALIDATION),
    "qnli": TextTaskSpec(("question", "sentence"), _VALIDATION),
    # spec §4.2/§4.11: matched and mismatched are evaluated separately (eval_matched_*, eval_mismatched_*)
    "mnli": TextTaskSpec(
        ("premise", "hypothesis"), {"matched": "validation_matched", "mismatched": "validation_mismatched"}
    ),
    "qqp": TextTaskSpec(("question1", "question2"), _VALIDATION, ("accuracy", "f1")),
    # best effort: the rest of GLUE's classification tasks, not used in the paper
    "cola": TextTaskSpec(("sentence",), _VALIDATION),
    "mrpc": TextTaskSpec(("sentence1", "sentence2"), _VALIDATION, ("accuracy", "f1")),
    "rte": TextTaskSpec(("sentence1", "sentence2"), _VALIDATION),
    "wnli": TextTaskSpec(("sentence1", "sentence2"), _VALIDATION),
    # embedded default: Wikipedia vital-article summary -> one of 11 topics (SST-2's place), and a question
    # "What is <title>?" with a sentence of its own or of another article's summary (QNLI's place)
    # (federated_proxy_finetuning/assets/wiki.py build_wiki)
    "wiki-topics": TextTaskSpec(("text",), _VALIDATION),
    "wiki-pairs": TextTaskSpec(("question", "sentence"), _VALIDATION),
    # the earlier embedded tasks: BBC News headlines, 5 topics (datasets/README.md)
    "bbc": TextTaskSpec(("text",), _VALIDATION),
    # embedded QNLI proxy: (headline, body sentence) -> same article or not (assets/bbc.py)
    "bbc-pairs": TextTaskSpec(("headline", "sentence"), _VALIDATION),
}


@dataclass
class TaskData:
    """A downstream task ready for federated fine-tuning: clients get rows of `train` (partitioned by
    `train_labels`), the server evaluates every `eval_splits` entry with `metric_names` (spec §4.2, §4.11)."""

    name: str
    modality: str  # "text" | "image" | "causal-lm"
    train: datasets.Dataset
    eval_splits: dict[str, datasets.Dataset]  # metric-prefix key ("" or "matched"/"mismatched") -> split
    num_labels: int
    id2label: dict[int, str]
    label2id: dict[str, int]
    train_labels: list[int]
    metric_names: tuple[str, ...]
    collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]]
    identity: str = ""  # the dataset's path and train-split fingerprint (keys the partition cache)

    def subset_eval(self, count_of: Callable[[int], int], seed: int) -> None:
        """Keep `count_of(rows)` seeded random rows of every eval split, in their stored order."""
        self.eval_splits = {
            k: v.select(seeded_rows(len(v), count_of(len(v)), seed)) for k, v in self.eval_splits.items()
        }

    def evaluate(self, model, batch_size: int, accelerator) -> dict:
        """Metrics of `model` as it is on every eval split (client.evaluate: argmax predictions of the head)."""
        from .client import evaluate

        return evaluate(model, self, batch_size, accelerator)


def seeded_rows(rows: int, count: int, seed: int) -> list[int]:
    """`count` of `rows` row indices drawn at random (seeded), in ascending order."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:count])


# ------------------------------------------------------------------------------------------------ shared helpers
def is_saved_dict(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file()


def check_splits(data: datasets.DatasetDict, splits: Sequence[str], columns: Sequence[str], where: str) -> None:
    missing_splits = [s for s in splits if s not in data]
    if missing_splits:
        raise TaskError(f"{where} lacks split(s) {', '.join(missing_splits)} (it has {', '.join(data) or 'none'})")
    for split in splits:
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise TaskError(
                f"{where} split {split!r} lacks column(s) {', '.join(missing)} "
                f"(it has {', '.join(data[split].column_names)})"
            )


def label_names(data: datasets.DatasetDict, label: str, splits: Sequence[str], default_count: int = 0) -> list[str]:
    """Class names from the ClassLabel feature; else str(i) for integer labels (spec §4.2)."""
    feature = data[splits[0]].features[label]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = {int(v) for s in splits for v in data[s][label]}
    if min(values, default=0) < 0:
        raise TaskError(f"label column {label!r} holds negative values (unlabelled rows?); use labelled splits only")
    count = max(default_count, max(values, default=-1) + 1)
    return [str(i) for i in range(count)]


def encode_string_labels(data: datasets.DatasetDict, label: str, splits: Sequence[str]) -> datasets.DatasetDict:
    """String labels become a ClassLabel over the sorted union of all splits' values (consistent ids)."""
    feature = data[splits[0]].features[label]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for s in splits for v in data[s][label]})
        data = datasets.DatasetDict({s: data[s].cast_column(label, datasets.ClassLabel(names=names)) for s in splits})
    return data


def label_mapping(names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------------ text tasks
def _load_text_dict(dataset_path: str, task_name: str) -> datasets.DatasetDict:
    """Loading order (spec §4.2): `{path}/{task}` save_to_disk folder, `{path}` itself as a save_to_disk
    DatasetDict, then `load_dataset(path, task)` (the reference's `../datasets/glue` + config layout)."""
    root = Path(dataset_path)
    for folder in (root / task_name, root):
        if is_saved_dict(folder):
            with reading(folder, "dataset folder"):
                return datasets.load_from_disk(str(folder))
    hint = f"; {FETCH_HINT}" if task_name in EMBEDDED_TASKS else ""
    if not root.exists():
        raise TaskError(f"dataset folder {root / task_name} not found (nor {root}){hint}")
    try:
        loaded = datasets.load_dataset(str(root), task_name)
    except Exception as exc:  # datasets raises many types for folders it cannot read
        logger.debug("load_dataset(%s, %s) failed", root, task_name, exc_info=True)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(
            f"no data for task {task_name!r}: {root / task_name} is not a save_to_disk folder and "
            f"load_dataset({str(root)!r}, {task_name!r}) failed ({first_line}){hint}"
        ) from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise TaskError(f"{root} holds a single split; expected a DatasetDict with train and eval splits")
    return loaded


def dataset_identity(dataset_path: str, train: datasets.Dataset) -> str:
    """Where the data came from and what its train split holds (its `datasets` fingerprint)."""
    return f"{Path(dataset_path).resolve()}#{train._fingerprint}"


def _tokenizer_fingerprint(tokenizer) -> str:
    """A stable digest of what the tokenizer does. The backend's truncation/padding state is left out: it
    changes with every call, which is also why `datasets`' own hash of a tokenizer is not stable."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(f"{type(tokenizer).__name__}:{text}".encode()).hexdigest()


def _cache_folder(
    cache_dir: str, task_name: str, raw: datasets.DatasetDict, keys: Sequence[str], tokenizer, max_length: int
) -> Path:
    """`cache_dir/<task>-<tokenizer basename>-<max_length>-<hash>`; the hash covers the dataset fingerprints,
    the text columns and the tokenizer, so a changed dataset or tokenizer never reuses a stale cache."""
    fingerprints = {split: raw[split]._fingerprint for split in raw}
    digest = hashlib.sha1(
        json.dumps([fingerprints, list(keys), _tokenizer_fingerprint(tokenizer)], sort_keys=True).encode()
    ).hexdigest()[:12]
    tokenizer_name = os.path.basename(os.path.normpath(str(tokenizer.name_or_path or ""))) or "tokenizer"
    return Path(cache_dir) / f"{task_name}-{tokenizer_name}-{max_length}-{digest}"


def _tokenize(raw: datasets.DatasetDict, keys: Sequence[str], tokenizer, max_length: int, task_name: str):
    """spec §4.2: truncation to max_length, no padding at map time (the collator pads per batch); the text
    columns go, `labels` stays next to input_ids, attention_mask (+ token_type_ids for BERT)."""

    def encode(batch: dict) -> dict:
        return tokenizer(*[batch[k] for k in keys], truncation=True, max_length=max_length)

    # keep_in_memory: datasets would otherwise write its cache next to the source arrow files (our own cache
    # below is the one that is reused)
    return raw.map(encode, batched=True, remove_columns=list(keys), keep_in_memory=True, desc=f"tokenising {task_name}")


def _tokenize_cached(raw, keys, tokenizer, max_length, cache_dir, task_name) -> datasets.DatasetDict:
    if cache_dir is None:
        return _tokenize(raw, keys, tokenizer, max_length, task_name)
    target = _cache_folder(cache_dir, task_name, raw, keys, tokenizer, max_length)
    if is_saved_dict(target) and manifest_holds(target):
        logger.info("reusing tokenised %s from %s", task_name, target)
    else:
        if target.exists():
            logger.warning("tokenised %s in %s is damaged or incomplete: rebuilding it", task_name, target)
        # a concurrent writer's copy is kept, a damaged one replaced
        with atomic_folder(target, keep_existing=not target.exists()) as tmp:
            _tokenize(raw, keys, tokenizer, max_length, task_name).save_to_disk(str(tmp))
            write_manifest(tmp)
        logger.info("tokenised %s cached at %s", task_name, target)
    with reading(target, "tokenised-data cache"):
        return datasets.load_from_disk(str(target))  # memory-mapped, identical on first and later loads


def load_text_task(
    task_name: str,
    dataset_path: str,
    tokenizer,
    max_length: int = 512,
    cache_dir: str | None = None,
    label_name: str = "label",
) -> TaskData:
    """A GLUE-style or the embedded BBC text task, tokenised once (and cached under `cache_dir`) (spec §4.2)."""
    if task_name in LM_TASKS:
        raise TaskError(
            f"{task_name} is an instruction task for a causal-LM FM (LLaMA, Qwen2, Mistral), not a classifier"
        )
    if task_name not in TEXT_TASKS:
        raise TaskError(f"unknown text task {task_name!r}; supported: {', '.join(sorted(TEXT_TASKS))}")
    spec = TEXT_TASKS[task_name]
    raw = _load_text_dict(dataset_path, task_name)
    identity = dataset_identity(dataset_path, raw["train"]) if "train" in raw else ""
    splits = ["train", *spec.eval_splits.values()]
    check_splits(raw, splits, [*spec.keys, label_name], f"dataset {dataset_path} ({task_name})")
    raw = datasets.DatasetDict({s: raw[s].select_columns([*spec.keys, label_name]) for s in splits})
    raw = encode_string_labels(raw, label_name, splits)
    id2label, label2id = label_mapping(label_names(raw, label_name, splits))
    if label_name != "labels":
        raw = raw.rename_column(label_name, "labels")
    tokenized = _tokenize_cached(raw, spec.keys, tokenizer, max_length, cache_dir, task_name)
    return TaskData(
        name=task_name,
        modality="text",
        train=tokenized["train"],
        eval_splits={key: tokenized[split] for key, split in spec.eval_splits.items()},
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
        train_labels=[int(v) for v in tokenized["train"]["labels"]],
        metric_names=spec.metrics,
        collate_fn=text_collator(tokenizer),
        identity=identity,
    )
