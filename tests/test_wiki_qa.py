"""wiki-qa's answers (federated_proxy_finetuning/assets/wiki_qa.py): sentences survive initials and abbreviations,
an answer is one or two sentences within QA_MAX_WORDS words, and a built folder keeps to wiki-topics' articles."""

from __future__ import annotations

from pathlib import Path

import pytest

from federated_proxy_finetuning.assets.wiki_qa import QA_MAX_WORDS, answer, sentences

ROOT = Path(__file__).resolve().parents[1]


def test_sentences_do_not_end_at_initials_or_abbreviations():
    text = "Riley B. King was a singer. The Gulf of St. Lawrence is wide. Symphony No. 9 is choral."
    assert sentences(text) == [
        "Riley B. King was a singer.",
        "The Gulf of St. Lawrence is wide.",
        "Symphony No. 9 is choral.",
    ]


def test_an_answer_is_one_or_two_sentences_within_the_word_cap():
    short, medium = "Amber is fossilized tree resin.", "Words " + " ".join(["word"] * 39) + "."
    assert answer(f"{short} It is old. It is yellow.") == f"{short} It is old."
    assert answer(f"{short} {medium}") == f"{short} {medium}"
    assert answer(f"{medium} {medium}") == medium  # the two would pass the cap
    assert answer(" ".join(["word"] * (QA_MAX_WORDS + 1)) + ". Short one.") is None


@pytest.mark.skipif(not (ROOT / "datasets" / "wiki-qa" / "dataset_dict.json").exists(), reason="wiki-qa not built")
def test_a_built_wiki_qa_keeps_to_the_wiki_topics_articles_of_its_split():
    import datasets

    qa = datasets.load_from_disk(str(ROOT / "datasets" / "wiki-qa"))
    topics = datasets.load_from_disk(str(ROOT / "datasets" / "wiki-topics"))
    for split in ("train", "validation"):
        assert set(qa[split]["title"]) <= set(topics[split]["title"])
    assert qa["train"].features["topic"].names == topics["train"].features["label"].names
