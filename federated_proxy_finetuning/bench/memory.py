"""The peak memory of one client's training step: each model in a fresh process that loads it the way a client does
(`python -m federated_proxy_finetuning.bench.memory SPEC`, SPEC a JSON object), adds LoRA and AdamW and takes three
training steps. Peak RSS on CPU (sampled every millisecond), torch.cuda.max_memory_allocated on a GPU."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from sub_model_construct.families import family_of
from sub_model_construct.sub_model_io import load_sub_model

from .models import batch_for, client_model, head_class, vocab_of
from .timing import client_optimizer, train_step

ROOT = Path(__file__).resolve().parents[2]

# glibc keeps memory that PyTorch frees for reuse (its mmap threshold grows with the blocks freed), so a CPU peak
# RSS holds several hundred MiB that no tensor uses. A fixed threshold of 128 KiB returns freed blocks to the system:
# the peak RSS then follows what the step really holds, at 21-25 % more step time, which is why only the memory
# children are run this way, never the timed steps or the suite's runs.
RETURNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current_rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.current_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_rss())


def memory_child(spec: dict) -> dict:
    """In a fresh process: load one client model as a client does, add LoRA and AdamW, take three training steps;
    return the memory before the steps and the peak during them."""
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    family = family_of(spec["family"])
    heads = head_class(spec["head"])
    imports = PeakRSS.current_rss()  # the runtime (python, torch, transformers) before any model exists
    labels = family.modality.head_labels(2)  # a classifier's two classes; nothing for a causal LM's own head
    if spec["kind"] == "sub_model":
        model = load_sub_model(spec["path"], heads, **labels)
    else:
        model = heads.from_pretrained(spec["path"], **labels)
    vocab = vocab_of(model.config)
    model = client_model(spec["key"], model, family, spec["lora_rank"]).to(device)
    model.train()
    optimizer = client_optimizer(model)
    batch = batch_for(family, spec["batch"], spec["seq"], spec["image_size"], 2, device, vocab)
    out = {"parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()), "imports_bytes": imports}
    out.update(step_peak(model, batch, optimizer, device))
    return out


def step_peak(model, batch, optimizer, device: str) -> dict:
    """The memory before three training steps and the peak during them, and how it was measured."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(3):
            train_step(model, batch, optimizer)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"before_bytes": before, "peak_bytes": peak, "measure": "CUDA max allocated"}
    if Path("/proc/self/statm").is_file():
        with PeakRSS() as rss:
            before = rss.current_rss()
            for _ in range(3):
                train_step(model, batch, optimizer)
        return {"before_bytes": before, "peak_bytes": rss.peak, "measure": "peak RSS"}
    # no /proc: the process's lifetime peak, which includes loading
    scale = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    for _ in range(3):
        train_step(model, batch, optimizer)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"before_bytes": before, "peak_bytes": peak, "measure": "lifetime peak RSS (ru_maxrss)"}


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


def measure_memory(spec: dict, env: dict | None = None) -> dict:
    """memory_child(spec) in a fresh process (with `env` added to its environment)."""
    proc = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {spec['key']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))
