"""Client partitions of the training split with flgo's own partitioners (spec §4.3), cached as
`task/<name>/data.json` ({"0": {"data": [row indices]}, ...})."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sub_model_construct.cli import atomic_write_text

logger = logging.getLogger(__name__)
PARTITIONERS = ("iid", "dir", "div")


class PartitionError(ValueError):
    """A partition that cannot be made or a cache that does not fit the task."""


@contextlib.contextmanager
def numpy_seed(seed: int):
    """flgo draws from numpy's global RNG: seed it (spec §4.3: 1206) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def make_partition(
    labels: Sequence[int],
    num_clients: int,
    partitioner: str = "iid",
    dir_alpha: float = 1.0,
    diversity: float = 1.0,
    imbalance: float = 0.0,
    seed: int = 1206,
) -> list[list[int]]:
    from flgo.benchmark.toolkits.partition import DirichletPartitioner, DiversityPartitioner, IIDPartitioner

    if partitioner not in PARTITIONERS:
        raise PartitionError(f"unknown partitioner {partitioner!r}; choose from {', '.join(PARTITIONERS)}")
    if not 1 <= num_clients <= len(labels):
        raise PartitionError(f"num_clients must be in 1..{len(labels)} (the training set size), got {num_clients}")
    classes = {c: i for i, c in enumerate(sorted(set(labels)))}
    dense = [classes[c] for c in labels]  # diversity expects labels 0..K-1
    if partitioner == "iid":
        chooser = IIDPartitioner(num_clients=num_clients, imbalance=imbalance)
    elif partitioner == "dir":
        chooser = DirichletPartitioner(
            num_clients=num_clients, alpha=dir_alpha, imbalance=imbalance, index_func=lambda x: list(x)
        )
    else:
        chooser = DiversityPartitioner(num_clients=num_clients, diversity=diversity, index_func=lambda x: list(x))
    captured = io.StringIO()
    with numpy_seed(seed), contextlib.redirect_stdout(captured):  # flgo prints its Dirichlet search progress
        parts = chooser(dense)
    if captured.getvalue():
        logger.debug("flgo: %s", captured.getvalue().strip())
    parts = [[int(i) for i in p] for p in parts]
    empty = [c for c, p in enumerate(parts) if not p]
    if empty:
        raise PartitionError(
            f"client {empty[0]} received no data ({len(empty)} empty clients); use fewer clients or a larger --dir_alpha"
        )
    return parts


def task_dir_name(
    task_name: str, num_clients: int, partitioner: str, imbalance: float, dir_alpha: float, diversity: float
) -> str:
    """spec §4.3: dataset{task}-c{N}-partition{iid|dir|div}-im{imbalance}-para{None|dir_alpha|diversity}."""
    para = {"iid": None, "dir": dir_alpha, "div": diversity}.get(partitioner)
    return f"dataset{task_name}-c{num_clients}-partition{partitioner}-im{imbalance}-para{para}"


def load_or_create_partition(
    root: str,
    task_name: str,
    labels: Sequence[int],
    num_clients: int,
    partitioner: str,
    dir_alpha: float,
    diversity: float,
    imbalance: float,
    seed: int,
    write: bool = True,
) -> list[list[int]]:
    """Reuse `{root}/{task_dir_name}/data.json` when present (checked against the task), else make and write it
    atomically (only where `write`, i.e. on the main process)."""
    folder = Path(root) / task_dir_name(task_name, num_clients, partitioner, imbalance, dir_alpha, diversity)
    cache = folder / "data.json"
    if cache.exists():
        raw = json.loads(cache.read_text())
        parts = [raw[str(c)]["data"] for c in range(len(raw))]
        if len(parts) != num_clients or any(i >= len(labels) or i < 0 for p in parts for i in p):
            raise PartitionError(
                f"{cache} does not fit this task ({len(labels)} examples, {num_clients} clients); "
                f"delete it to re-partition"
            )
        return parts
    parts = make_partition(labels, num_clients, partitioner, dir_alpha, diversity, imbalance, seed)
    if write:
        atomic_write_text(cache, json.dumps({str(c): {"data": p} for c, p in enumerate(parts)}))
    return parts
