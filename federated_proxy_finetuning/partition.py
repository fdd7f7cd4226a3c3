"""Client partitions of the training split made by flgo's own partitioners and cached as
`{root}/{task_dir_name}/data.json` = {"0": {"data": [row indices]}, ...} (spec §4.3)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from flgo.benchmark.toolkits.partition import DirichletPartitioner, DiversityPartitioner, IIDPartitioner

from sub_model_construct.io import atomic_write_text

logger = logging.getLogger(__name__)

PARTITIONERS = ("iid", "dir", "div")
DEFAULT_SEED = 1206  # spec §4.3: numpy is seeded with 1206 before partitioning


class PartitionError(ValueError):
    """A partition that cannot be made, or a cached partition that does not fit the task."""


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """flgo draws from numpy's global RNG: seed it (spec §4.3) and give the caller its own state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_arguments(
    num_examples: int, num_clients: int, partitioner: str, dir_alpha: float, diversity: float, imbalance: float
) -> None:
    if partitioner not in PARTITIONERS:
        raise PartitionError(f"unknown partitioner {partitioner!r}; choose one of {', '.join(PARTITIONERS)}")
    if not 1 <= num_clients <= num_examples:
        raise PartitionError(
            f"num_clients must be between 1 and the number of training examples ({num_examples}), got {num_clients}"
        )
    if partitioner == "dir" and not dir_alpha > 0:  # Dir(0) gives NaN proportions and flgo would redraw forever
        raise PartitionError(f"dir_alpha must be positive for the dir partitioner, got {dir_alpha}")
    if partitioner == "div" and not 0 < diversity <= 1:
        raise PartitionError(f"diversity must be in (0, 1] for the div partitioner, got {diversity}")
    if imbalance < 0:
        raise PartitionError(f"imbalance must be non-negative, got {imbalance}")


def _partitioner(num_classes: int, num_clients: int, partitioner: str, dir_alpha, diversity, imbalance):
    """flgo's partitioner for the name (spec §4.3); the data handed to it is the dense label list."""
    if partitioner == "iid":
        return IIDPartitioner(num_clients=num_clients, imbalance=imbalance)
    if partitioner == "dir":
        return DirichletPartitioner(
            num_clients=num_clients, alpha=dir_alpha, imbalance=imbalance, index_func=lambda X: list(X)
        )
    classes_per_client = max(int(diversity * num_classes), 1)  # flgo's rule (spec §4.3)
    if classes_per_client * num_clients < num_classes:  # flgo would crash splitting an unowned class
        raise PartitionError(
            f"{num_clients} clients with {classes_per_client} of {num_classes} classes each cannot cover every "
            f"class; use more clients or a larger diversity"
        )
    return DiversityPartitioner(num_clients=num_clients, diversity=diversity, index_func=lambda X: list(X))


def make_partition(
    labels: Sequence[int],
    num_clients: int,
    partitioner: str = "iid",
    dir_alpha: float = 1.0,
    diversity: float = 1.0,
    imbalance: float = 0.0,
    seed: int = DEFAULT_SEED,
) -> list[list[int]]:
    """Training-row indices per client from flgo's IID, Dirichlet or Diversity partitioner (spec §4.3),
    drawn under `np.random.seed(seed)` without disturbing the caller's numpy RNG."""
    _check_arguments(len(labels), num_clients, partitioner, dir_alpha, diversity, imbalance)
    dense_id = {c: i for i, c in enumerate(sorted(set(labels)))}
    dense = [dense_id[c] for c in labels]  # flgo's Diversity partitioner expects labels 0..K-1
    chooser = _partitioner(len(dense_id), num_clients, partitioner, dir_alpha, diversity, imbalance)
    flgo_output = io.StringIO()
    with numpy_seed(seed), contextlib.redirect_stdout(flgo_output):  # the Dirichlet search prints "Error: ..."
        parts = chooser(dense)
    for line in flgo_output.getvalue().splitlines():
        logger.debug("flgo %s: %s", partitioner, line)
    parts = [[int(i) for i in part] for part in parts]
    empty = [c for c, part in enumerate(parts) if not part]
    if empty:
        raise PartitionError(
            f"{len(empty)} of {num_clients} clients (first: client {empty[0]}) received no data; "
            f"use fewer clients or a larger dir_alpha"
        )
    return parts


def task_dir_name(
    task_name: str,
    num_clients: int,
    partitioner: str,
    imbalance: float,
    dir_alpha: float,
    diversity: float,
    seed: int = DEFAULT_SEED,
    dataset_key: str = "",
) -> str:
    """spec §4.3's `dataset{task}-c{N}-partition{iid|dir|div}-im{imbalance}-para{None|dir_alpha|diversity}`, then
    `-seed{S}-{digest}`: the partition seed and a digest of the dataset's identity and training labels, so a cache
    is only reused for the exact data, flags and seed that made it."""
    para = {"dir": dir_alpha, "div": diversity}.get(partitioner)
    name = f"dataset{task_name}-c{num_clients}-partition{partitioner}-im{imbalance}-para{para}-seed{seed}"
    return f"{name}-{dataset_key}" if dataset_key else name


def dataset_key(identity: str, labels: Sequence[int]) -> str:
    """Digest of what a partition depends on besides its flags: the dataset (path, fingerprint) and its labels."""
    digest = hashlib.sha1(identity.encode())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:12]


def _read_cache(path: Path, num_clients: int, num_examples: int) -> list[list[int]]:
    """The cached partition, checked against the task: `num_clients` entries of indices < `num_examples`."""
    misfit = (
        f"{path} does not fit this task ({num_examples} examples, {num_clients} clients); delete it to re-partition"
    )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parts = [[int(i) for i in raw[str(c)]["data"]] for c in range(len(raw))]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartitionError(misfit) from exc
    if len(parts) != num_clients or any(not 0 <= i < num_examples for part in parts for i in part):
        raise PartitionError(misfit)
    return parts


def load_or_create_partition(
    root: str,
    task_name: str,
    labels: Sequence[int],
    num_clients: int,
    partitioner: str,
    dir_alpha: float,
    diversity: float,
    imbalance: float,
    seed: int = DEFAULT_SEED,
    write: bool = True,
    dataset_identity: str = "",
) -> list[list[int]]:
    """Reuse `{root}/{task_dir_name}/data.json` when present (spec §4.3: the partition is generated only once);
    otherwise make it and, where `write` (the main process), write it atomically. Other processes compute the
    same partition from the same seed."""
    key = dataset_key(dataset_identity, labels)
    folder = Path(root) / task_dir_name(task_name, num_clients, partitioner, imbalance, dir_alpha, diversity, seed, key)
    cache = folder / "data.json"
    digest = folder / "data.json.sha256"  # what data.json held when written: a changed cache is never trusted
    if cache.is_file():
        try:
            parts = _read_cache(cache, num_clients, len(labels))
            if not digest.is_file() or digest.read_text().strip() == _sha256(cache):
                if write and not digest.is_file():  # written before digests were kept: its content fits the task
                    atomic_write_text(digest, _sha256(cache) + "\n")
                logger.info("reusing the client partition %s", cache)
                return parts
        except (PartitionError, OSError):
            pass
        logger.warning("the client partition %s is damaged: making it again", cache)
    parts = make_partition(labels, num_clients, partitioner, dir_alpha, diversity, imbalance, seed)
    if write:
        atomic_write_text(cache, json.dumps({str(c): {"data": part} for c, part in enumerate(parts)}))
        atomic_write_text(digest, _sha256(cache) + "\n")
        logger.info("client partition written to %s", cache)
    return parts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
