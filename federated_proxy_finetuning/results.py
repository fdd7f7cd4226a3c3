"""The run folder (spec §4.12, ARCHITECTURE §3): config.json, metrics.jsonl, summary.json and round checkpoints
from which --resume continues to the same result as an uninterrupted run. Only the main process writes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from sub_model_construct.cli import atomic_write_json, atomic_write_text

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "flgo", "numpy", "scikit-learn")


def run_name(args) -> str:
    """Run folder name from the key hyper-parameters (spec §4.12 pattern, with the effective batch)."""
    batch = args.per_device_train_batch_size * args.num_processes * args.gradient_accumulation_steps
    aligning = args.method == "pft" and 0 < args.align_interval < args.num_rounds
    name = (
        f"{args.method}-lr{args.learning_rate}-lst{args.lr_scheduler_type}-bs{batch}-e{args.num_epochs}"
        f"-rounds{args.num_rounds}-proportion{args.proportion}-lora-r{args.lora_rank}-alpha{args.lora_alpha}"
        f"-align{aligning}-ai{args.align_interval}-ae{args.align_epochs}-arr{args.align_retained_ratio}"
    )
    if args.partitioner != "iid":
        name += f"-{args.partitioner}{args.dir_alpha if args.partitioner == 'dir' else args.diversity}"
    return name + f"-seed{args.seed}"


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

    def write_config(self, config: dict) -> None:
        if self.is_main:
            atomic_write_json(self.path / "config.json", {**config, "environment": environment()})

    # ------------------------------------------------------------------ metrics
    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> list[dict]:
        """Keep records up to `last_round` (a resumed run rewrites what came after its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["round"] <= last_round]
        if self.is_main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def append_metrics(self, record: dict, history: list[dict]) -> None:
        history.append(record)
        if self.is_main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))

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
        if self.is_main:
            atomic_write_json(self.path / "summary.json", summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, round_index: int) -> Path:
        return self.server / f"checkpoint-round{round_index}"

    def save_checkpoint(self, round_index: int, fm_peft, state: dict, keep: set[int]) -> None:
        """Adapter in PEFT format (loadable with PeftModel.from_pretrained on the FM) + server state; older round
        checkpoints not in `keep` are removed. Written to a temp folder and renamed: a crash never leaves a half
        checkpoint behind."""
        if not self.is_main:
            return
        final = self.checkpoint_dir(round_index)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fm_peft.save_pretrained(str(tmp))
        torch.save(state, tmp / "server_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.server.glob("checkpoint-round*"):
            suffix = old.name.removeprefix("checkpoint-round")
            if suffix.isdigit() and int(suffix) not in keep | {round_index}:
                shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        found = [
            (int(p.name.removeprefix("checkpoint-round")), p)
            for p in self.server.glob("checkpoint-round*")
            if p.name.removeprefix("checkpoint-round").isdigit() and (p / "server_state.pt").is_file()
        ]
        return max(found)[1] if found else None
