"""Which clients train in which round (spec §4.5): the whole schedule drawn at start-up from one seeded stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def sample_schedule(
    num_clients: int, proportion: float, rounds: int, mode: str, sizes: Sequence[int], seed: int
) -> list[list[int]]:
    """Clients drawn for rounds 1..R (spec §4.5), from one seeded stream, so pre-sampling or not gives the same
    draws and a resumed run sees the same schedule. uniform: K without replacement; full: everyone; md: K with
    replacement, probability proportional to data size (duplicates kept: they weigh the aggregation)."""
    k = max(int(num_clients * proportion), 1)
    rng = np.random.RandomState(seed)
    schedule = []
    for _ in range(rounds):
        if mode == "full":
            schedule.append(list(range(num_clients)))
        elif mode == "uniform":
            schedule.append(sorted(rng.choice(num_clients, k, replace=False).tolist()))
        elif mode == "md":
            p = np.asarray(sizes, dtype=float) / sum(sizes)
            schedule.append(sorted(rng.choice(num_clients, k, replace=True, p=p).tolist()))
        else:
            raise ValueError(f"unknown sampling {mode!r}")
    return schedule


def multiplicities(selected: Sequence[int]) -> list[tuple[int, int]]:
    """(client, times drawn) in ascending client order."""
    return sorted(Counter(selected).items())
