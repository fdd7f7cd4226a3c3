"""Causal-LM tasks for a decoder FM: instruction -> answer records (datasets/wiki-qa, assets/wiki_qa.py), each
tokenised with the tokenizer's own chat template, the loss on the answer tokens only, and their metrics: the
token-weighted loss and perplexity of the answers, and the accuracy of a topic read from label-word likelihoods."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

import datasets
from sub_model_construct.io import atomic_folder
from sub_model_construct.reads import manifest_holds, reading, write_manifest

from .lm_scoring import IGNORE, dataset_logprobs, topic_logprobs
from .tasks import (
    LM_TASKS,
    TEXT_TASKS,
    TaskData,
    TaskError,
    _cache_folder,
    check_splits,
    dataset_identity,
    encode_string_labels,
    is_saved_dict,
    seeded_rows,
)

COLUMNS = ("instruction", "response", "topic", "title")
TOPIC_QUESTION = "Which topic is the article '{title}' about? Choose one of: {names}."
METRICS = ("topic_accuracy", "perplexity")


@dataclass
class LMTask(TaskData):
    """A causal-LM task: `train` and the validation split hold input_ids, attention_mask and labels (IGNORE on the
    prompt); `train_labels` are the train rows' topics (so a partition can be non-IID by topic); `topic_prompts` holds,
    for every validation article and every topic, its topic question answered with that topic's name (labels on the
    name's tokens only), with the columns `article` (row of the validation split), `candidate` and `topic` (true)."""

    topic_prompts: datasets.Dataset | None = None
    label_words: list[str] = field(default_factory=list)
    # the topic question with an empty title, once per topic: each name's prior, subtracted from its score
    topic_baseline: datasets.Dataset | None = None

    def subset_eval(self, count_of, seed: int) -> None:
        """Keep seeded random validation records and the topic prompts of their articles."""
        validation = self.eval_splits[""]
        rows = seeded_rows(len(validation), count_of(len(validation)), seed)
        self.eval_splits = {"": validation.select(rows)}
        renumbered = {old: new for new, old in enumerate(rows)}
        prompts = self.topic_prompts.filter(lambda r: r["article"] in renumbered)
        self.topic_prompts = prompts.map(lambda r: {"article": renumbered[r["article"]]})

    def evaluate(self, model, batch_size: int, accelerator) -> dict:
        """The answer loss, perplexity and topic accuracy of `model` as it is (evaluate_lm)."""
        return evaluate_lm(model, self, batch_size, accelerator)


# ------------------------------------------------------------------------------------------------ tokenising
def chat_prompt_ids(tokenizer, content: str) -> list[int]:
    """A user turn holding `content` and the assistant's generation prompt, in the tokenizer's own chat template."""
    messages = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_record(tokenizer, instruction: str, response: str, max_length: int) -> dict:
    """prompt + response + eos, cut to max_length from the response's end; labels IGNORE on the prompt."""
    prompt = chat_prompt_ids(tokenizer, instruction)
    if len(prompt) >= max_length:
        raise TaskError(
            f"the prompt of {instruction!r} is {len(prompt)} tokens, leaving no answer token within max_length "
            f"{max_length}; raise max_length"
        )
    target = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + ids[len(prompt) :]}


def encode_topic_prompts(tokenizer, rows: datasets.Dataset, label_words: list[str], max_length: int) -> dict:
    """One row per (validation article, topic): the topic question answered with the topic's name."""
    words = [list(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in label_words]
    names = ", ".join(label_words)
    out = {k: [] for k in ("input_ids", "attention_mask", "labels", "article", "candidate", "topic")}
    for article, (title, topic) in enumerate(zip(rows["title"], rows["topic"])):
        prompt = chat_prompt_ids(tokenizer, TOPIC_QUESTION.format(title=title, names=names))
        if len(prompt) + max(map(len, words)) > max_length:
            raise TaskError(
                f"the topic question of {title!r} with its longest answer is {len(prompt) + max(map(len, words))} "
                f"tokens, over max_length {max_length}; raise max_length"
            )
        for candidate, word in enumerate(words):
            out["input_ids"].append(prompt + word)
            out["attention_mask"].append([1] * (len(prompt) + len(word)))
            out["labels"].append([IGNORE] * len(prompt) + word)
            out["article"].append(article)
            out["candidate"].append(candidate)
            out["topic"].append(int(topic))
    return out


def encode_splits(raw: datasets.DatasetDict, tokenizer, max_length: int, label_words: list[str]):
    """train, validation (input_ids, attention_mask, labels) and topic_prompts, in the rows' order."""
    tables = {}
    for split in ("train", "validation"):
        encoded = [
            encode_record(tokenizer, i, r, max_length)
            for i, r in zip(raw[split]["instruction"], raw[split]["response"])
        ]
        tables[split] = datasets.Dataset.from_dict(
            {k: [e[k] for e in encoded] for k in ("input_ids", "attention_mask", "labels")}
        )
    tables["topic_prompts"] = datasets.Dataset.from_dict(
        encode_topic_prompts(tokenizer, raw["validation"], label_words, max_length)
    )
    no_title = datasets.Dataset.from_dict({"title": [""], "topic": [0]})
    tables["topic_baseline"] = datasets.Dataset.from_dict(
        encode_topic_prompts(tokenizer, no_title, label_words, max_length)
    )
    return datasets.DatasetDict(tables)


def encode_cached(raw, tokenizer, max_length: int, label_words: list[str], cache_dir: str | None, name: str):
    """encode_splits, saved once under cache_dir and reused (keyed by the data, the tokenizer, its chat template and
    eos, the topic question and max_length)."""
    if cache_dir is None:
        return encode_splits(raw, tokenizer, max_length, label_words)
    keys = [
        "causal-lm",
        "calibrated",
        tokenizer.chat_template,
        tokenizer.eos_token_id,
        TOPIC_QUESTION,
        list(label_words),
    ]
    target = _cache_folder(cache_dir, name, raw, keys, tokenizer, max_length)
    if not (is_saved_dict(target) and manifest_holds(target)):
        with atomic_folder(target, keep_existing=not target.exists()) as tmp:
            encode_splits(raw, tokenizer, max_length, label_words).save_to_disk(str(tmp))
            write_manifest(tmp)
    with reading(target, "tokenised-data cache"):
        return datasets.load_from_disk(str(target))


def collate_lm(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding: input_ids with pad_id, attention_mask with 0, labels with IGNORE."""
    width = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows], dtype=torch.long)

    return {
        "input_ids": padded("input_ids", pad_id),
        "attention_mask": padded("attention_mask", 0),
        "labels": padded("labels", IGNORE),
    }


def _read(name: str, dataset_path: str, tokenizer) -> datasets.DatasetDict:
    if name not in LM_TASKS:
        known = "a classification task for an encoder FM" if name in TEXT_TASKS else "not a causal-LM task"
        raise TaskError(f"{name} is {known}; a causal-LM FM fine-tunes on {', '.join(LM_TASKS)}")
    folder = Path(dataset_path) / name
    if not is_saved_dict(folder):
        raise TaskError(
            f"dataset folder {folder} not found; build it with `python scripts/prepare_assets.py {name} --out {dataset_path}`"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__} has no chat template")
    if tokenizer.eos_token_id is None:
        raise TaskError(f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__} has no eos token")
    with reading(folder, "dataset folder"):
        raw = datasets.load_from_disk(str(folder))
    if not isinstance(raw, datasets.DatasetDict):
        raise TaskError(f"{folder} holds a single split; expected a DatasetDict with train and validation")
    check_splits(raw, ("train", "validation"), COLUMNS, f"dataset {folder}")
    raw = datasets.DatasetDict({s: raw[s].select_columns(list(COLUMNS)) for s in ("train", "validation")})
    return encode_string_labels(raw, "topic", ("train", "validation"))


def load_lm_task(name: str, dataset_path: str, tokenizer, max_length: int, cache_dir: str | None) -> LMTask:
    """`<dataset_path>/<name>` (instruction, response, topic, title), tokenised with the tokenizer's chat template."""
    raw = _read(name, dataset_path, tokenizer)
    label_words = list(raw["train"].features["topic"].names)
    encoded = encode_cached(raw, tokenizer, max_length, label_words, cache_dir, name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LMTask(
        name=name,
        modality="causal-lm",
        train=encoded["train"],
        eval_splits={"": encoded["validation"]},
        num_labels=len(label_words),
        id2label=dict(enumerate(label_words)),
        label2id={w: i for i, w in enumerate(label_words)},
        train_labels=[int(t) for t in raw["train"]["topic"]],
        metric_names=METRICS,
        collate_fn=partial(collate_lm, pad_id=pad_id),
        identity=dataset_identity(dataset_path, raw["train"]),
        topic_prompts=encoded["topic_prompts"],
        label_words=label_words,
        topic_baseline=encoded["topic_baseline"],
    )


# ------------------------------------------------------------------------------------------------ metrics
def topic_predictions(prompts: datasets.Dataset, scores: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) topic of every article: the candidate of the largest score (evaluate_lm: its name's
    summed log-probability as the answer, less the same with no title)."""
    article, candidate = np.asarray(prompts["article"]), np.asarray(prompts["candidate"])
    grid = np.full((int(article.max()) + 1 if len(article) else 0, num_labels), -np.inf)
    grid[article, candidate] = scores
    truth = np.zeros(len(grid), dtype=np.int64)
    truth[article] = np.asarray(prompts["topic"])
    return grid.argmax(1), truth


@torch.no_grad()
def evaluate_lm(model, task: LMTask, batch_size: int, accelerator) -> dict:
    """The metrics of `model` as it is: eval_loss (mean NLL per answer token over the whole validation split),
    eval_perplexity (its exp), eval_topic_accuracy (topic read from label-word likelihoods, each name's summed
    log-probability as the answer less its log-probability when the title is left out: a content-free prior, as in
    contextual calibration; without it the shortest names win whatever the article), eval_confusion (rows
    true topic, columns predicted), eval_runtime and eval_samples_per_second (validation records per second)."""
    from .client import confusion  # client imports the task modules: imported here, not at the top

    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        validation = task.eval_splits[""]
        logp, counts = dataset_logprobs(model, validation, task.collate_fn, batch_size, accelerator)
        scores = topic_logprobs(model, task.topic_prompts, task.collate_fn, batch_size, accelerator)
        prior = topic_logprobs(model, task.topic_baseline, task.collate_fn, batch_size, accelerator)
        scores = scores - prior[np.asarray(task.topic_prompts["candidate"])]
    finally:
        model.train(was_training)
    loss = float(-logp.sum() / max(int(counts.sum()), 1))
    preds, truth = topic_predictions(task.topic_prompts, scores, task.num_labels)
    seconds = time.perf_counter() - started
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(loss) if loss < 700 else math.inf,
        "eval_topic_accuracy": float((preds == truth).mean()) if len(truth) else float("nan"),
        "eval_confusion": confusion(preds, truth, task.num_labels),
        "eval_runtime": seconds,
        "eval_samples_per_second": len(validation) / seconds if seconds else None,
    }
