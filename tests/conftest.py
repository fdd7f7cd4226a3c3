"""Offline, single-threaded tests: tiny models gain nothing from threads, and one thread avoids oversubscribing
the cores while CLI subprocesses run beside the test process."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
