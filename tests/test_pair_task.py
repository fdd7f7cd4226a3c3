"""The BBC sentence-pair proxy of QNLI (federated_proxy_finetuning/assets/bbc.py): balanced, article-disjoint
splits, no client text from the public corpus; and the stored splits are shuffled (not grouped by label)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from federated_proxy_finetuning.assets import bbc
from federated_proxy_finetuning.assets.common import shuffled

ROOT = Path(__file__).resolve().parents[1]

BODY = "First sentence of article {i} has enough words here. Second sentence of article {i} is also long enough. Tiny."


def articles(n: int, topics: int = 2) -> list[dict]:
    return [
        {"article_id": f"t{i % topics}/{i:03d}", "text": f"headline {i}", "body": BODY.format(i=i), "label": i % topics}
        for i in range(n)
    ]


def test_pairs_are_balanced_and_negatives_come_from_another_article_of_the_same_topic():
    pairs = bbc.sentence_pairs(articles(10), random.Random(0))
    assert Counter(p["label"] for p in pairs) == {0: 5, 1: 5}
    assert sorted(p["article_id"] for p in pairs) == sorted(a["article_id"] for a in articles(10))  # one per article
    by_id = {a["article_id"]: a for a in articles(10)}
    for p in pairs:
        own = by_id[p["article_id"]]
        source = by_id[p["sentence_article_id"]]
        assert p["headline"] == own["text"]
        assert p["sentence"] in source["body"] and p["sentence"] != "Tiny."  # short sentences are never drawn
        assert (p["label"] == 1) == (source is own)
        assert source["label"] == own["label"]  # same topic: the topic does not give the answer away


def test_sentences_keep_only_usable_lengths():
    assert bbc.sentences("One two three four five six. Short one. Seven eight nine ten eleven twelve!") == [
        "One two three four five six.",
        "Seven eight nine ten eleven twelve!",
    ]


def test_shuffled_is_a_seeded_permutation():
    items = list(range(50))
    once = shuffled(items, random.Random(3))
    assert sorted(once) == items and once != items
    assert once == shuffled(items, random.Random(3))


PAIRS = ROOT / "datasets" / "bbc-pairs"


@pytest.mark.skipif(not (PAIRS / "dataset_dict.json").exists(), reason="embedded assets not fetched")
def test_embedded_pair_task_is_balanced_article_disjoint_and_client_free():
    import datasets

    pairs = datasets.load_from_disk(str(PAIRS))
    topic = datasets.load_from_disk(str(ROOT / "datasets" / "bbc"))
    ids = {}
    for split in ("train", "validation"):
        rows = pairs[split]
        assert Counter(rows["label"]) == {0: len(rows) // 2, 1: len(rows) // 2}
        ids[split] = set(rows["article_id"]) | set(rows["sentence_article_id"])
        # article-disjoint and drawn from the topic task's split of the same name, never from the public corpus
        assert ids[split] <= set(topic[split]["article_id"])
        labels = list(rows["label"])
        assert labels[: len(labels) // 2].count(1) not in (0, len(labels) // 2)  # stored shuffled
    assert not ids["train"] & ids["validation"]
    corpus = set(datasets.load_from_disk(str(ROOT / "datasets" / "bbc-corpus"))["train"]["text"])
    assert not any(s in body for body in corpus for s in list(pairs["validation"]["sentence"])[:50])
    first = list(topic["validation"]["label"])[:40]
    assert len(set(first)) > 1  # the topic task's splits are shuffled too
