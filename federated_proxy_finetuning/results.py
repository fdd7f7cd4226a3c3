"""The run folder (spec §4.12, ARCHITECTURE §3): config.json, metrics.jsonl, summary.json, align/round<r>.json and
round checkpoints from which --resume continues to the same result as an uninterrupted run. Only the main process
writes.

A round checkpoint `server/checkpoint-round<r>/` holds the global adapter once, in PEFT format (what
`PeftModel.from_pretrained(fm, path)` loads, and what a resume reads), and `server_state.pt` with the rest of the
server's state (clients' sub-FM versions; with alignment, its accumulation counter and the sub-FM weights it changed).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from sub_model_construct import io, reads

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "flgo", "numpy", "scikit-learn")
CHECKPOINT_PREFIX = "checkpoint-round"
STATE_FILE = "server_state.pt"

logger = logging.getLogger(__name__)


def environment() -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"packages": versions, "git_commit": commit, "python": platform.python_version()}


def read_adapter(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter of a round checkpoint, keyed as `adapters.adapter_state` keys it (in FM layer names)."""
    from peft.utils import load_peft_weights

    return load_peft_weights(str(checkpoint), device="cpu")


class RunFolder:
    def __init__(self, path: str | os.PathLike, is_main: bool) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.metrics_path = self.path / "metrics.jsonl"
        self.timings_path = self.path / "timings.jsonl"  # wall time of every part of each round (Server.log_timings)
        self.server = self.path / "server"
        self.lock = io.RunLock(self.path)  # one run per folder

    # ------------------------------------------------------------------ lifecycle
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Called after the existence check; wipes the folder for --overwrite (main process only)."""
        if self.is_main and overwrite and self.path.exists() and not resume:
            shutil.rmtree(self.path)
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def is_finished(self) -> bool:
        """A summary.json that says the run finished (one that cannot be read is refused, naming it)."""
        path = self.path / "summary.json"
        if not path.exists():
            return False
        summary = reads.json_file(path, "run summary")
        if not isinstance(summary, dict):
            raise reads.ReadError(f"run summary {path} is not a JSON object")
        return bool(summary.get("finished"))

    def write_json(self, relative: str | os.PathLike, obj) -> None:
        if self.is_main:
            io.atomic_write_json(self.path / relative, obj)

    def write_config(self, config: dict) -> None:
        self.write_json("config.json", {**config, "environment": environment()})

    # ------------------------------------------------------------------ metrics.jsonl and timings.jsonl
    def _read_records(self, path: Path, what: str) -> list[dict]:
        """The records of a JSONL file; a line that is not a record with an integer round is refused, naming it."""
        if not path.exists():
            return []
        with reads.reading(path, f"{what} file"):
            lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            with reads.reading(f"{path}:{n}", f"{what} record"):
                record = json.loads(line)
            if not isinstance(record, dict) or type(record.get("round")) is not int:
                raise reads.ReadError(f"{what} record {path}:{n} has no integer round")
            records.append(record)
        return records

    def _write_records(self, path: Path, records: list[dict]) -> None:
        if self.is_main:
            io.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict]:
        return self._read_records(self.metrics_path, "metrics")

    def truncate_metrics(self, last_round: int) -> list[dict]:
        """Keep records up to `last_round` (a resumed run rewrites what came after its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["round"] <= last_round]
        self._write_records(self.metrics_path, kept)
        return kept

    def append_metrics(self, record: dict, history: list[dict]) -> None:
        history.append(record)
        self._write_records(self.metrics_path, history)

    def read_timings(self) -> list[dict]:
        """timings.jsonl only holds wall times (a diagnostic, never resumed from): a file that cannot be read is
        dropped with a warning rather than stopping a resume."""
        try:
            return self._read_records(self.timings_path, "timings")
        except reads.ReadError as exc:
            logger.warning("%s; starting the timings file afresh", exc)
            return []

    def write_timings(self, records: list[dict]) -> None:
        self._write_records(self.timings_path, records)

    def truncate_timings(self, last_round: int) -> list[dict]:
        kept = [r for r in self.read_timings() if r["round"] <= last_round]
        self.write_timings(kept)
        return kept

    def write_summary(self, history: list[dict], metric: str, finished: bool, extra: dict) -> dict:
        key = f"eval_{metric}"
        evaluated = [r for r in history if key in r.get("fm", {})]
        summary = {"metric": key, "finished": finished, **extra}
        if evaluated:
            final = evaluated[-1]
            summary.update(final_round=final["round"], final=final["fm"], final_sub_fm=final.get("sub_fm"))
        trained = [r for r in evaluated if r["round"] > 0]  # round 0 is the untrained FM: never the best
        if trained:
            best = max(trained, key=lambda r: r["fm"][key])
            summary.update(
                best_round=best["round"],
                best=best["fm"],
                best_metric=best["fm"][key],
                best_model_checkpoint=str(self.checkpoint_dir(best["round"])),
            )
        self.write_json("summary.json", summary)
        return summary

    @staticmethod
    def best_rounds(history: list[dict], metric: str) -> set[int]:
        """The trained round whose FM scored best (the earliest of equals): its checkpoint is kept."""
        key = f"eval_{metric}"
        scored = [(r["fm"][key], -r["round"], r["round"]) for r in history if key in r.get("fm", {}) and r["round"] > 0]
        return {max(scored)[2]} if scored else set()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, round_index: int) -> Path:
        return self.server / f"{CHECKPOINT_PREFIX}{round_index}"

    def save_checkpoint(self, round_index: int, write_adapter, state: dict, keep: set[int]) -> None:
        """The adapter (`write_adapter(folder)` writes its PEFT files) + the server state, atomically; older round
        checkpoints not in `keep` are removed."""
        if not self.is_main:
            return
        io.save_checkpoint(self.checkpoint_dir(round_index), write_adapter, state, STATE_FILE)
        io.prune_checkpoints(self.server, CHECKPOINT_PREFIX, keep | {round_index})

    def latest_checkpoint(self) -> Path | None:
        return io.latest_checkpoint(self.server, CHECKPOINT_PREFIX, STATE_FILE)

    @staticmethod
    def read_state(checkpoint: Path, keys: tuple[str, ...] = ("round", "sync")) -> dict:
        """The server state of a round checkpoint; a file that cannot be read, or lacks `keys` or its round, is
        refused naming it."""
        path = checkpoint / STATE_FILE
        with reads.reading(path, "server state"):
            state = io.load_state(checkpoint, STATE_FILE)
        missing = [k for k in keys if not isinstance(state, dict) or k not in state]
        if missing:
            raise reads.ReadError(f"server state {path} lacks {', '.join(missing)}")
        if state["round"] != io.checkpoint_step(checkpoint, CHECKPOINT_PREFIX):
            raise reads.ReadError(f"server state {path} is of round {state['round']}, not of its folder's round")
        return state

    def read_checkpoint(self, checkpoint: Path, state_keys: tuple[str, ...]) -> tuple[dict, dict]:
        """(server state, adapter) of the round checkpoint a resume continues from, read once before any writing,
        with the metrics checked to reach its round."""
        state = self.read_state(checkpoint, state_keys)
        with reads.reading(checkpoint / "adapter_model.safetensors", "adapter file"):
            adapter = read_adapter(checkpoint)
        rounds = [r["round"] for r in self.read_metrics()]
        last = io.checkpoint_step(checkpoint, CHECKPOINT_PREFIX)
        if last not in rounds:  # metrics are written before the checkpoint of their round
            raise reads.ReadError(f"metrics file {self.metrics_path} lacks round {last} of checkpoint {checkpoint}")
        return state, adapter
