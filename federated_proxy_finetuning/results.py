"""The run folder (spec §4.12, ARCHITECTURE §3): config.json, metrics.jsonl, summary.json, align/round<r>.json and
round checkpoints from which --resume continues to the same result as an uninterrupted run. Only the main process
writes.

A round checkpoint `server/checkpoint-round<r>/` holds the global adapter once, in PEFT format (what
`PeftModel.from_pretrained(fm, path)` loads, and what a resume reads), and `server_state.pt` with the rest of the
server's state (clients' sub-FM versions; with alignment, its accumulation counter and the sub-FM weights it changed).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from sub_model_construct import io

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "flgo", "numpy", "scikit-learn")
CHECKPOINT_PREFIX = "checkpoint-round"
STATE_FILE = "server_state.pt"


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
        self.server = self.path / "server"

    # ------------------------------------------------------------------ lifecycle
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Called after the existence check; wipes the folder for --overwrite (main process only)."""
        if self.is_main and overwrite and self.path.exists() and not resume:
            shutil.rmtree(self.path)
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def is_finished(self) -> bool:
        """A summary.json that says the run finished."""
        try:
            return bool(json.loads((self.path / "summary.json").read_text()).get("finished"))
        except (OSError, ValueError, AttributeError):
            return False

    def write_json(self, relative: str | os.PathLike, obj) -> None:
        if self.is_main:
            io.atomic_write_json(self.path / relative, obj)

    def write_config(self, config: dict) -> None:
        self.write_json("config.json", {**config, "environment": environment()})

    # ------------------------------------------------------------------ metrics
    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def _write_metrics(self, records: list[dict]) -> None:
        if self.is_main:
            io.atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    def truncate_metrics(self, last_round: int) -> list[dict]:
        """Keep records up to `last_round` (a resumed run rewrites what came after its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["round"] <= last_round]
        self._write_metrics(kept)
        return kept

    def append_metrics(self, record: dict, history: list[dict]) -> None:
        history.append(record)
        self._write_metrics(history)

    def write_summary(self, history: list[dict], metric: str, finished: bool, extra: dict) -> dict:
        key = f"eval_{metric}"
        evaluated = [r for r in history if key in r.get("fm", {})]
        summary = {"metric": key, "finished": finished, **extra}
        if evaluated:
            best = max(evaluated, key=lambda r: r["fm"][key])
            final = evaluated[-1]
            summary.update(
                final_round=final["round"],
                final=final["fm"],
                final_sub_fm=final.get("sub_fm"),
                best_round=best["round"],
                best=best["fm"],
                best_metric=best["fm"][key],
                best_model_checkpoint=str(self.checkpoint_dir(best["round"])),
            )
        self.write_json("summary.json", summary)
        return summary

    @staticmethod
    def best_rounds(history: list[dict], metric: str) -> set[int]:
        """The round whose FM scored best (the earliest of equals): its checkpoint is kept."""
        key = f"eval_{metric}"
        scored = [(r["fm"][key], -r["round"], r["round"]) for r in history if key in r.get("fm", {})]
        return {max(scored)[2]} if scored else set()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, round_index: int) -> Path:
        return self.server / f"{CHECKPOINT_PREFIX}{round_index}"

    def save_checkpoint(self, round_index: int, fm_peft, state: dict, keep: set[int]) -> None:
        """The FM's adapter in PEFT format + the server state, atomically; older round checkpoints not in `keep`
        are removed."""
        if not self.is_main:
            return
        io.save_checkpoint(
            self.checkpoint_dir(round_index), lambda tmp: fm_peft.save_pretrained(str(tmp)), state, STATE_FILE
        )
        io.prune_checkpoints(self.server, CHECKPOINT_PREFIX, keep | {round_index})

    def latest_checkpoint(self) -> Path | None:
        return io.latest_checkpoint(self.server, CHECKPOINT_PREFIX, STATE_FILE)

    @staticmethod
    def read_state(checkpoint: Path) -> dict:
        return io.load_state(checkpoint, STATE_FILE)
