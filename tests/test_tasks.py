"""Downstream tasks (spec §4.2) and metrics (spec §4.11) on tiny data built in tmp_path: no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

import datasets
from federated_proxy_finetuning.client import compute_metrics, eval_prefix
from federated_proxy_finetuning.image_tasks import load_image_task
from federated_proxy_finetuning.tasks import TEXT_TASKS, TaskError, load_text_task
from tests import tiny

NLI = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
TOPICS = datasets.ClassLabel(names=["business", "entertainment", "politics", "sport", "tech"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    folder = tmp_path_factory.mktemp("tokenizer")
    return BertTokenizerFast(vocab_file=str(tiny.write_vocab(folder)), do_lower_case=True)


def _sentences(count: int, offset: int) -> list[str]:
    return [" ".join(tiny.WORDS[(offset + i + j) % len(tiny.WORDS)] for j in range(2 + i % 7)) for i in range(count)]


def write_mnli_like(folder: Path) -> Path:
    """GLUE MNLI layout: premise/hypothesis/label(ClassLabel)/idx with matched and mismatched validation."""

    def split(count: int, offset: int) -> datasets.Dataset:
        features = datasets.Features(
            premise=datasets.Value("string"),
            hypothesis=datasets.Value("string"),
            label=NLI,
            idx=datasets.Value("int32"),
        )
        return datasets.Dataset.from_dict(
            {
                "premise": _sentences(count, offset),
                "hypothesis": _sentences(count, offset + 3),
                "label": [i % 3 for i in range(count)],
                "idx": list(range(count)),
            },
            features=features,
        )

    data = {"train": split(12, 0), "validation_matched": split(5, 1), "validation_mismatched": split(4, 2)}
    datasets.DatasetDict(data).save_to_disk(str(folder))
    return folder


def write_bbc_like(folder: Path, train_rows: int = 10) -> Path:
    def split(count: int, offset: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "article_id": [str(i) for i in range(count)],
                "text": _sentences(count, offset),
                "label": [i % 5 for i in range(count)],
            },
            features=datasets.Features(
                article_id=datasets.Value("string"), text=datasets.Value("string"), label=TOPICS
            ),
        )

    datasets.DatasetDict({"train": split(train_rows, 0), "validation": split(5, 4)}).save_to_disk(str(folder))
    return folder


# ------------------------------------------------------------------------------------------------ text
def test_pair_task_columns_eval_splits_and_padding(tmp_path, tokenizer):
    write_mnli_like(tmp_path / "glue" / "mnli")  # loading order (1): {dataset_path}/{task_name}
    task = load_text_task("mnli", str(tmp_path / "glue"), tokenizer, max_length=16)
    assert task.modality == "text" and task.name == "mnli"
    assert set(task.eval_splits) == {"matched", "mismatched"}  # spec §4.2: evaluated separately
    assert [eval_prefix(k) for k in task.eval_splits] == ["eval_matched_", "eval_mismatched_"]
    assert len(task.eval_splits["matched"]) == 5 and len(task.eval_splits["mismatched"]) == 4
    for split in [task.train, *task.eval_splits.values()]:
        assert set(split.column_names) == {"labels", "input_ids", "attention_mask", "token_type_ids"}
    assert task.num_labels == 3 and task.id2label[2] == "contradiction" and task.label2id["neutral"] == 1
    assert task.train_labels == [i % 3 for i in range(12)] and task.metric_names == ("accuracy",)
    first = task.train[0]["input_ids"]
    assert first[0] == tokenizer.cls_token_id and first.count(tokenizer.sep_token_id) == 2  # a sentence pair
    assert max(len(ids) for ids in task.train["input_ids"]) <= 16  # truncated, not padded at map time
    lengths = [len(ids) for ids in task.train["input_ids"][:4]]
    assert len(set(lengths)) > 1
    batch = task.collate_fn([task.train[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, max(lengths)) == batch["attention_mask"].shape  # dynamic padding
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths


def test_single_text_task_from_the_folder_itself_and_metric_table(tmp_path, tokenizer):
    write_bbc_like(tmp_path / "bbc")  # loading order (2): dataset_path is the DatasetDict
    task = load_text_task("bbc", str(tmp_path / "bbc"), tokenizer, max_length=512)
    assert list(task.eval_splits) == [""] and eval_prefix("") == "eval_"
    assert task.num_labels == 5 and task.id2label == dict(enumerate(TOPICS.names))
    assert "text" not in task.train.column_names and "article_id" not in task.train.column_names
    assert TEXT_TASKS["qqp"].metrics == ("accuracy", "f1") and TEXT_TASKS["sst2"].keys == ("sentence",)


def test_tokenised_cache_is_written_once_and_reused(tmp_path, tokenizer, monkeypatch):
    data = write_bbc_like(tmp_path / "data" / "bbc")
    cache = tmp_path / "cache"
    first = load_text_task("bbc", str(tmp_path / "data"), tokenizer, max_length=8, cache_dir=str(cache))
    folders = [p for p in cache.iterdir()]
    assert len(folders) == 1 and folders[0].name.startswith("bbc-") and "-8-" in folders[0].name
    assert (folders[0] / "dataset_dict.json").is_file()

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the cached tokenisation should have been reused")

    monkeypatch.setattr(datasets.DatasetDict, "map", no_tokenising)
    second = load_text_task("bbc", str(tmp_path / "data"), tokenizer, max_length=8, cache_dir=str(cache))
    assert second.train[:] == first.train[:] and second.eval_splits[""][:] == first.eval_splits[""][:]
    monkeypatch.undo()

    # another max_length or changed data is a different cache entry
    load_text_task("bbc", str(tmp_path / "data"), tokenizer, max_length=6, cache_dir=str(cache))
    write_bbc_like(data, train_rows=7)
    changed = load_text_task("bbc", str(tmp_path / "data"), tokenizer, max_length=8, cache_dir=str(cache))
    assert len(changed.train) == 7
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_string_labels_become_class_ids(tmp_path, tokenizer):
    rows = {"sentence": _sentences(6, 0), "label": ["pos", "neg", "pos", "neg", "neg", "pos"]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "sst2"))
    task = load_text_task("sst2", str(tmp_path), tokenizer)
    assert task.id2label == {0: "neg", 1: "pos"} and task.train_labels == [1, 0, 1, 0, 0, 1]


def test_text_task_errors_are_one_clear_sentence(tmp_path, tokenizer):
    with pytest.raises(TaskError, match=r"unknown text task 'stsb'; supported: bbc, bbc-pairs, cola, mnli"):
        load_text_task("stsb", str(tmp_path), tokenizer)
    with pytest.raises(TaskError, match=r"missing.bbc not found.*bash scripts/fetch_assets.sh"):
        load_text_task("bbc", str(tmp_path / "missing"), tokenizer)
    with pytest.raises(TaskError, match=r"not a save_to_disk folder and load_dataset"):
        load_text_task("qnli", str(tmp_path), tokenizer)  # exists, but holds nothing loadable
    write_bbc_like(tmp_path / "sst2")  # a `text` column where sst2 needs `sentence`
    with pytest.raises(TaskError, match=r"split 'train' lacks column\(s\) sentence"):
        load_text_task("sst2", str(tmp_path), tokenizer)
    write_mnli_like(tmp_path / "qqp")
    with pytest.raises(TaskError, match=r"lacks split\(s\) validation "):
        load_text_task("qqp", str(tmp_path), tokenizer)


# ------------------------------------------------------------------------------------------------ images
def write_digits(folder: Path, count: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L") for _ in range(n)]
        features = datasets.Features(
            image=datasets.Image(), label=datasets.ClassLabel(names=[str(d) for d in range(10)])
        )
        return datasets.Dataset.from_dict({"image": images, "label": [i % 10 for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(count), "test": split(4)}).save_to_disk(str(folder))
    return folder


def test_image_task_shapes_labels_and_determinism(tmp_path):
    write_digits(tmp_path / "mnist")
    stats = {"image_mean": [0.5], "image_std": [0.5], "num_channels": 1}
    task = load_image_task(str(tmp_path / "mnist"), stats, image_size=16)
    assert (task.name, task.modality, task.num_labels, list(task.eval_splits)) == ("mnist", "image", 10, [""])
    assert task.train_labels == [i % 10 for i in range(12)] and task.id2label[3] == "3"

    def train_batch() -> dict:
        return task.collate_fn([task.train[i] for i in range(4)])

    torch.manual_seed(0)
    first = train_batch()
    assert first["pixel_values"].shape == (4, 1, 16, 16) and first["labels"].tolist() == [0, 1, 2, 3]
    torch.manual_seed(0)
    assert torch.equal(train_batch()["pixel_values"], first["pixel_values"])  # random crops follow torch's RNG
    assert not torch.equal(train_batch()["pixel_values"], first["pixel_values"])
    evaluation = task.collate_fn([task.eval_splits[""][i] for i in range(3)])
    assert evaluation["pixel_values"].shape == (3, 1, 16, 16)
    assert torch.equal(
        evaluation["pixel_values"], task.collate_fn([task.eval_splits[""][i] for i in range(3)])["pixel_values"]
    )


def test_image_task_converts_to_the_model_channels(tmp_path):
    from transformers import ViTImageProcessor

    write_digits(tmp_path / "digits", count=3)
    processor = ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    rgb = load_image_task(str(tmp_path / "digits"), processor, image_size=8, hflip=False)
    assert rgb.collate_fn([rgb.train[0]])["pixel_values"].shape == (1, 3, 8, 8)
    gray = load_image_task(str(tmp_path / "digits"), processor, image_size=8, num_channels=1)
    assert gray.collate_fn([gray.eval_splits[""][0]])["pixel_values"].shape == (1, 1, 8, 8)


def test_image_task_errors(tmp_path):
    stats = {"image_mean": [0.5], "image_std": [0.5]}
    with pytest.raises(TaskError, match=r"mnist not found.*bash scripts/fetch_assets.sh"):
        load_image_task(str(tmp_path / "mnist"), stats, 8)
    write_digits(tmp_path / "digits", count=2)
    with pytest.raises(TaskError, match=r"lacks column\(s\) fine_label"):
        load_image_task(str(tmp_path / "digits"), stats, 8, label_name="fine_label")


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_accuracy_and_binary_f1():
    preds, labels = np.array([1, 0, 1, 1, 0]), np.array([1, 0, 0, 1, 1])
    scores = compute_metrics(preds, labels, ("accuracy", "f1"))
    assert scores == pytest.approx({"accuracy": 3 / 5, "f1": 2 / 3})  # precision 2/3, recall 2/3
    assert compute_metrics(np.array([2, 1, 0]), np.array([2, 1, 1]), ("accuracy",)) == pytest.approx(
        {"accuracy": 2 / 3}
    )
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(preds, labels, ("mcc",))
