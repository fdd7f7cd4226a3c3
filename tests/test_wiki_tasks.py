"""The Wikipedia tasks and corpus (federated_proxy_finetuning/assets/wiki.py build_wiki): wiki-pairs asks every
question once with each label and uses every sentence once, no sentence names its question's title, the negatives
come from the same topic; the three folders are article-disjoint; the validation splits are large enough to resolve
1-2 points."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from federated_proxy_finetuning.assets import wiki

ROOT = Path(__file__).resolve().parents[1]

EXTRACT = (
    "{title} is the subject of article {i}. It was described in detail by {i} careful observers. "
    "Several later accounts of its history appeared in print {i} times. Tiny."
)


def articles(n: int, topics: int = 2) -> list[dict]:
    return [
        {"title": f"Zorbl{i:03d}", "extract": EXTRACT.format(title=f"Zorbl{i:03d}", i=i), "topic": f"T{i % topics}"}
        for i in range(n)
    ]


def test_title_words_and_what_names_a_title():
    title = wiki.title_words("Mercury (planet) and the Sun")
    assert title == {"mercury", "planet", "sun"}
    assert wiki.names_title("The planets orbit.", title)  # a shared five-letter stem
    assert wiki.names_title("Sun rises.", title)
    assert not wiki.names_title("Sunday is a day of rest.", title)  # short title words match whole words
    assert not wiki.names_title("It orbits a star.", title)


def test_wiki_sentences_drop_the_title_and_the_lengths_out_of_range():
    found = wiki.wiki_sentences(articles(1)[0])
    assert found == [
        "It was described in detail by 0 careful observers.",
        "Several later accounts of its history appeared in print 0 times.",
    ]


def test_question_pairs_ask_each_question_once_per_label_and_use_each_sentence_once():
    source = articles(12, topics=3)
    pairs = wiki.question_pairs(source, random.Random(0))
    assert len(pairs) == 24
    assert Counter((p["question"], p["label"]) for p in pairs) == {
        (f"What is {a['title']}?", label): 1 for a in source for label in (0, 1)
    }
    assert max(Counter(p["sentence"] for p in pairs).values()) == 1
    topic = {a["title"]: a["topic"] for a in source}
    for p in pairs:
        assert (p["label"] == 1) == (p["sentence_title"] == p["title"])
        assert topic[p["sentence_title"]] == topic[p["title"]] == p["topic"]
        assert not wiki.names_title(p["sentence"], wiki.title_words(p["title"]))


WIKI = [ROOT / "datasets" / name for name in ("wiki-topics", "wiki-pairs", "wiki-corpus")]


@pytest.mark.skipif(not all((p / "dataset_dict.json").exists() for p in WIKI), reason="embedded assets not fetched")
def test_embedded_wiki_folders_are_article_disjoint_balanced_and_large():
    import datasets

    topics, pairs, corpus = (datasets.load_from_disk(str(p)) for p in WIKI)
    assert len(topics["validation"]) >= 2000 and len(pairs["validation"]) >= 2000
    assert len(topics["train"].features["label"].names) == 11
    topic_titles = {split: set(topics[split]["title"]) for split in topics}
    pair_titles = {split: set(pairs[split]["title"]) | set(pairs[split]["sentence_title"]) for split in pairs}
    everything = [*topic_titles.values(), *pair_titles.values()]
    for i, a in enumerate(everything):  # train/validation of both tasks: no article in two of them
        for b in everything[i + 1 :]:
            assert not a & b
    texts = set(corpus["train"]["text"])
    assert not texts & (set(topics["train"]["text"]) | set(topics["validation"]["text"]))
    for split in pairs:
        assert Counter(pairs[split]["label"]) == {0: len(pairs[split]) // 2, 1: len(pairs[split]) // 2}
        assert not any(sentence in text for sentence in pairs[split]["sentence"][:200] for text in texts)
    for split in topics:  # stored shuffled, not grouped by label
        labels = topics[split]["label"][:100]
        assert len(set(labels)) > 5
