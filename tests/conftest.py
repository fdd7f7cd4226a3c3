"""Offline, single-threaded tests: tiny models gain nothing from threads, and one thread avoids oversubscribing
the cores while CLI subprocesses run beside the test process.

Set at import, before any test module imports transformers; `setdefault` leaves a caller's choice alone.
`tests/__init__.py` makes `tests` a package, so pytest puts the repository root on sys.path and `from tests import
tiny` works from a plain `pytest` run as well as `python -m pytest`.
"""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by CLI subprocesses started with os.environ

import torch  # noqa: E402

torch.set_num_threads(1)
