"""wiki-qa: instruction -> answer records for a causal LM, from the wiki-topics articles of the Wikipedia summaries.

The articles are those that split_wiki (wiki.py) assigns to the wiki-topics task: train records come from its train
articles and validation records from its validation articles, so the evaluation articles are held out, and no
wiki-corpus (public corpus) or wiki-pairs article is used. The split is redrawn from the same seed, and the records
use a random generator of their own, so building wiki-qa changes none of the other wiki outputs."""

from __future__ import annotations

import random
import re
from pathlib import Path

from federated_proxy_finetuning.assets.common import SEED, save_splits, shuffled, stratified_split
from federated_proxy_finetuning.assets.wiki import read_wiki_summaries, split_wiki

QA_TRAIN = 2000  # records drawn from the wiki-topics train articles (stratified by topic)
QA_VALIDATION = 550  # records drawn from the wiki-topics validation articles (stratified by topic)
QA_MAX_WORDS = 60  # an answer is the first sentence, plus the second while the two stay within this many words
QA_SEED = SEED + 2  # wiki.py draws with SEED (split, wiki-topics, wiki-corpus) and SEED + 1 (wiki-pairs)
INSTRUCTIONS = ("What is {title}?", "Tell me about {title}.")
# a period after these ends no sentence: "St. Lawrence", "Symphony No. 9", "Op. 71", "Riley B. King"
ABBREVIATION = re.compile(r"(?:\b[A-Z]|\bSt|\bNo|\bOp|\bMr|\bMrs|\bMs|\bDr|\bJr|\bSr|\bMt|\bFt|\bvs|\bc|\bca)\.$")


def sentences(text: str) -> list[str]:
    """The sentences of an extract: split after . ! ? before a capital, digit, quote or parenthesis, except after an
    initial or a common abbreviation."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", re.sub(r"\s+", " ", text).strip())
    out: list[str] = []
    for part in parts:
        if out and ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


def answer(extract: str) -> str | None:
    """The first sentence of the extract, with the second while both stay within QA_MAX_WORDS words; None when the
    first sentence alone is longer (such an article is not used)."""
    first, *rest = sentences(extract)
    if len(first.split()) > QA_MAX_WORDS:
        return None
    if rest and len(first.split()) + len(rest[0].split()) <= QA_MAX_WORDS:
        return f"{first} {rest[0]}"
    return first


def qa_records(articles: list[dict], count: int, topics: list[str], rng: random.Random) -> list[dict]:
    """`count` (rounded per topic) records of the articles with a usable answer, stratified by topic, shuffled."""
    usable = [(a, answer(a["extract"])) for a in articles]
    usable = [(a, text) for a, text in usable if text is not None]
    picked, _ = stratified_split(usable, [topics.index(a["topic"]) for a, _ in usable], count / len(usable), rng)
    records = []
    for article, text in picked:
        instruction = rng.choice(INSTRUCTIONS).format(title=article["title"])
        records.append(
            {"instruction": instruction, "response": text, "topic": article["topic"], "title": article["title"]}
        )
    return shuffled(records, rng)


def build_wiki_qa(out_root: Path) -> None:
    """datasets/wiki-qa: instruction ("What is <title>?" or "Tell me about <title>.") -> the first one or two
    sentences of the article's summary, with its topic (ClassLabel, wiki-topics' 11 names) and title."""
    import datasets

    parts = split_wiki(read_wiki_summaries(), random.Random(SEED))
    topics = sorted({a["topic"] for a in parts["train"]})
    rng = random.Random(QA_SEED)
    splits = {
        "train": qa_records(parts["train"], QA_TRAIN, topics, rng),
        "validation": qa_records(parts["validation"], QA_VALIDATION, topics, rng),
    }
    text = datasets.Value("string")
    features = datasets.Features(
        {"instruction": text, "response": text, "topic": datasets.ClassLabel(names=topics), "title": text}
    )
    save_splits(splits, features, out_root / "wiki-qa")
    words = sum(len(r["response"].split()) for rows in splits.values() for r in rows)
    print(
        f"[assets] wiki-qa: train {len(splits['train'])}, validation {len(splits['validation'])} records "
        f"({len(topics)} topics, {words / sum(map(len, splits.values())):.1f} words per answer)"
    )
