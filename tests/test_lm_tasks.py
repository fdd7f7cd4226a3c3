"""The causal-LM task (lm_tasks.py): chat-template tokenisation with the loss on the answer only, truncation, the
refusals, the token-weighted loss, the label-word topic scorer, and the data-parallel gathering. A tiny LLaMA and
the MiniLM tokenizer with a small chat template set here; SmolLM2 is used only when present."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

import datasets
from federated_proxy_finetuning.lm_tasks import (
    IGNORE,
    LMTask,
    chat_prompt_ids,
    dataset_logprobs,
    evaluate_lm,
    load_lm_task,
)
from federated_proxy_finetuning.tasks import TaskError

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "pretrain_models" / "all-MiniLM-L6-v2"
SMOLLM = ROOT / "pretrain_models" / "SmolLM2-135M-Instruct"
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
TOPICS = ["music", "sport", "science"]
RECORDS = {
    "train": [
        ("What is the cup?", "The cup is a game played by a team.", 1),
        ("Tell me about the band.", "A band plays music.", 0),
        ("What is a chip?", "A chip is part of a computer in the data network of the phone. " * 4, 2),
    ],
    "validation": [
        ("What is the award?", "The award is given for music and film by the star.", 0),
        ("Tell me about the match.", "A match.", 1),
        ("What is software?", "Software runs on a computer.", 2),
        ("What is the goal?", "The goal of the player is a win for the team in the cup match.", 1),
    ],
}
CPU = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))


def write_qa(root: Path, name: str = "wiki-qa") -> Path:
    features = datasets.Features(
        {
            "instruction": datasets.Value("string"),
            "response": datasets.Value("string"),
            "topic": datasets.ClassLabel(names=TOPICS),
            "title": datasets.Value("string"),
        }
    )
    tables = {
        split: datasets.Dataset.from_dict(
            {
                "instruction": [r[0] for r in rows],
                "response": [r[1] for r in rows],
                "topic": [r[2] for r in rows],
                "title": [r[0].split(" ", 2)[-1].rstrip("?.") for r in rows],
            },
            features=features,
        )
        for split, rows in RECORDS.items()
    }
    datasets.DatasetDict(tables).save_to_disk(str(root / name))
    return root


@pytest.fixture(scope="module")
def tokenizer():
    if not (MINILM / "tokenizer_config.json").exists():
        pytest.skip("pretrain_models/all-MiniLM-L6-v2 not fetched (bash scripts/fetch_assets.sh)")
    tok = AutoTokenizer.from_pretrained(str(MINILM))
    tok.chat_template = TEMPLATE
    tok.eos_token = "[SEP]"
    return tok


@pytest.fixture
def task(tmp_path, tokenizer) -> LMTask:
    return load_lm_task("wiki-qa", str(write_qa(tmp_path)), tokenizer, max_length=128, cache_dir=None)


def tiny_llama(vocab: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def test_the_loss_falls_on_the_answer_tokens_only(task, tokenizer):
    assert (task.modality, task.num_labels, task.label_words) == ("causal-lm", 3, TOPICS)
    assert task.metric_names == ("topic_accuracy", "perplexity") and list(task.eval_splits) == [""]
    assert task.train_labels == [1, 0, 2]
    for row, (instruction, response, _) in zip(task.train, RECORDS["train"]):
        prompt = chat_prompt_ids(tokenizer, instruction)
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert row["input_ids"] == prompt + answer
        assert row["labels"] == [IGNORE] * len(prompt) + answer
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    # one row per (validation article, topic), its labels on the topic name's tokens only
    prompts = task.topic_prompts
    assert len(prompts) == len(RECORDS["validation"]) * len(TOPICS)
    row = prompts[len(TOPICS) + 2]  # article 1, candidate 2
    assert (row["article"], row["candidate"], row["topic"]) == (1, 2, 1)
    word = tokenizer("science", add_special_tokens=False)["input_ids"]
    assert [t for t in row["labels"] if t != IGNORE] == word and row["input_ids"][-len(word) :] == word


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tmp_path, tokenizer):
    prompt = chat_prompt_ids(tokenizer, RECORDS["train"][2][0])
    roomy = load_lm_task("wiki-qa", str(write_qa(tmp_path / "roomy")), tokenizer, max_length=512, cache_dir=None)
    longest = max(len(chat_prompt_ids(tokenizer, r[0])) for rows in RECORDS.values() for r in rows)
    limit = max(longest + 1, max(map(len, roomy.topic_prompts["input_ids"])))
    task = load_lm_task("wiki-qa", str(write_qa(tmp_path)), tokenizer, max_length=limit, cache_dir=None)
    row = task.train[2]
    full = prompt + tokenizer(RECORDS["train"][2][1], add_special_tokens=False)["input_ids"]
    assert len(full) > limit > len(prompt)
    assert len(row["input_ids"]) == limit and row["input_ids"] == full[:limit]
    assert row["labels"][: len(prompt)] == [IGNORE] * len(prompt) and IGNORE not in row["labels"][len(prompt) :]


def test_refusals(tmp_path, tokenizer):
    root = str(write_qa(tmp_path))
    with pytest.raises(TaskError, match="not found") as missing:
        load_lm_task("wiki-qa", str(tmp_path / "nowhere"), tokenizer, 64, None)
    plain = AutoTokenizer.from_pretrained(str(MINILM))
    with pytest.raises(TaskError, match="no chat template") as untemplated:
        load_lm_task("wiki-qa", root, plain, 64, None)
    with pytest.raises(TaskError, match="max_length 5") as short:
        load_lm_task("wiki-qa", root, tokenizer, 5, None)
    for caught in (missing, untemplated, short):
        assert "\n" not in str(caught.value)


def test_collate_pads_on_the_right(task):
    batch = task.collate_fn([task.eval_splits[""][1], task.eval_splits[""][3]])
    short = sum(task.eval_splits[""][1]["attention_mask"])
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE).all() and batch["attention_mask"][0, :short].all()


def hand_loss(model, rows) -> tuple[float, float]:
    """(NLL summed over every answer token / their count, mean of the per-record means), one record at a time."""
    total, tokens, means = 0.0, 0, []
    for row in rows:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
        logits = model(input_ids=ids).logits[0, :-1]
        nll = F.cross_entropy(logits, labels[1:], ignore_index=IGNORE, reduction="sum").item()
        count = int((labels[1:] != IGNORE).sum())
        total, tokens = total + nll, tokens + count
        means.append(nll / count)
    return total / tokens, sum(means) / len(means)


def test_the_loss_is_token_weighted(task, tokenizer):
    model = tiny_llama(len(tokenizer))
    record = evaluate_lm(model, task, batch_size=2, accelerator=CPU)
    expected, mean_of_means = hand_loss(model, task.eval_splits[""])
    assert record["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(record["eval_loss"] - mean_of_means) > 1e-4  # the answers' lengths differ: the weighting matters
    assert record["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert set(record) == {
        "eval_loss",
        "eval_perplexity",
        "eval_topic_accuracy",
        "eval_confusion",
        "eval_runtime",
        "eval_samples_per_second",
    }
    assert sum(map(sum, record["eval_confusion"])) == len(RECORDS["validation"]) and not model.training


class Oracle(nn.Module):
    """Puts all probability on the next token of the known sequence sharing the longest prefix with the row."""

    def __init__(self, sequences: list[list[int]], vocab: int):
        super().__init__()
        self.sequences, self.vocab = sequences, vocab

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            best = max(
                self.sequences, key=lambda s: next((i for i, (x, y) in enumerate(zip(s, row)) if x != y), len(s))
            )
            for t, token in enumerate(best[1 : len(row)]):
                logits[b, t, token] = 30.0
        return SimpleNamespace(logits=logits)


def test_the_topic_scorer_reads_the_likeliest_name(task, tokenizer):
    prompts = task.topic_prompts
    right = [r["input_ids"] for r in prompts if r["candidate"] == r["topic"]]
    record = evaluate_lm(Oracle(right, len(tokenizer)), task, batch_size=5, accelerator=CPU)
    assert record["eval_topic_accuracy"] == 1.0
    assert record["eval_confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    first = [r["input_ids"] for r in prompts if r["candidate"] == 0]  # always "music": column 0 only
    record = evaluate_lm(Oracle(first, len(tokenizer)), task, batch_size=5, accelerator=CPU)
    assert record["eval_topic_accuracy"] == 0.25 and record["eval_confusion"] == [[1, 0, 0], [2, 0, 0], [1, 0, 0]]


def test_processes_share_the_batches_and_gather_them_in_order(task, tokenizer, monkeypatch):
    import accelerate.utils

    model, dataset = tiny_llama(len(tokenizer)), task.topic_prompts
    alone = dataset_logprobs(model, dataset, task.collate_fn, 2, CPU)
    second = {}
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: second.setdefault("rows", mine))
    dataset_logprobs(
        model, dataset, task.collate_fn, 2, SimpleNamespace(process_index=1, num_processes=2, device="cpu")
    )
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: mine + second["rows"])
    both = dataset_logprobs(
        model, dataset, task.collate_fn, 2, SimpleNamespace(process_index=0, num_processes=2, device="cpu")
    )
    assert len(second["rows"]) == len(dataset) // 2 // 2
    assert both[0] == pytest.approx(alone[0], rel=1e-5) and (both[1] == alone[1]).all()


def test_the_tokenised_task_is_cached(tmp_path, tokenizer):
    root = str(write_qa(tmp_path / "data"))
    first = load_lm_task("wiki-qa", root, tokenizer, 64, str(tmp_path / "cache"))
    again = load_lm_task("wiki-qa", root, tokenizer, 64, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert first.train["labels"] == again.train["labels"] and len(again.topic_prompts) == len(first.topic_prompts)


@pytest.mark.skipif(
    not (SMOLLM / "config.json").exists(), reason="optional SmolLM2 not fetched (fetch_assets.sh --llm)"
)
def test_smollm2_answers_with_a_finite_loss(tmp_path):
    tok = AutoTokenizer.from_pretrained(str(SMOLLM))
    task = load_lm_task("wiki-qa", str(write_qa(tmp_path)), tok, max_length=128, cache_dir=None)
    assert tok.decode(task.train[0]["input_ids"]).endswith(
        "<|im_start|>assistant\nThe cup is a game played by a team.<|im_end|>"
    )
    model = AutoModelForCausalLM.from_pretrained(str(SMOLLM))
    record = evaluate_lm(model, task, batch_size=4, accelerator=CPU)
    assert 0 < record["eval_loss"] < 8 and 0 <= record["eval_topic_accuracy"] <= 1


def test_a_smaller_evaluation_keeps_the_topic_prompts_of_its_articles(task):
    from federated_proxy_finetuning.tasks import seeded_rows

    before = task.topic_prompts
    topic_of = dict(zip(before["article"], before["topic"]))
    rows = seeded_rows(len(task.eval_splits[""]), 2, 0)
    ids = [task.eval_splits[""][r]["input_ids"] for r in rows]
    task.subset_eval(lambda count: 2, seed=0)
    assert task.eval_splits[""]["input_ids"] == ids
    prompts = task.topic_prompts
    assert sorted(set(prompts["article"])) == [0, 1] and len(prompts) == 2 * task.num_labels
    assert all(topic == topic_of[rows[a]] for a, topic in zip(prompts["article"], prompts["topic"]))
