"""Atomic writes and checkpoint folders, shared by distillation and federated runs (ARCHITECTURE §3).

Every file or folder a run writes appears whole or not at all: it is written beside its target under a hidden temp
name and renamed into place. A checkpoint is a folder `<prefix><step>` holding the model files (written by the
caller) and one torch state file; the latest one is the highest step whose state file exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


@contextmanager
def atomic_folder(target: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a fresh temp folder beside `target`; when the block succeeds it becomes `target`. An existing `target`
    is replaced, or with `keep_existing` (a cache another process may have written meanwhile, and may be reading)
    kept and the new one dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        if target.exists():
            if keep_existing:
                logger.debug("another process wrote %s first", target)
                return
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    folder: str | os.PathLike, write_model: Callable[[Path], None], state: dict, state_file: str
) -> None:
    """A checkpoint folder: what `write_model(path)` writes plus `state` (torch.save) as `state_file`, atomically."""
    with atomic_folder(folder) as tmp:
        write_model(tmp)
        torch.save(state, tmp / state_file)


def checkpoint_step(folder: Path, prefix: str) -> int | None:
    suffix = folder.name.removeprefix(prefix)
    return int(suffix) if folder.name.startswith(prefix) and suffix.isdigit() else None


def checkpoints(root: str | os.PathLike, prefix: str, state_file: str) -> dict[int, Path]:
    """Complete checkpoints below `root` by step."""
    found = {}
    for folder in Path(root).glob(f"{prefix}*"):
        step = checkpoint_step(folder, prefix)
        if step is not None and (folder / state_file).is_file():
            found[step] = folder
    return found


def latest_checkpoint(root: str | os.PathLike, prefix: str, state_file: str) -> Path | None:
    found = checkpoints(root, prefix, state_file)
    return found[max(found)] if found else None


def prune_checkpoints(root: str | os.PathLike, prefix: str, keep: set[int]) -> None:
    """Remove the checkpoint folders whose step is not in `keep`."""
    for folder in Path(root).glob(f"{prefix}*"):
        step = checkpoint_step(folder, prefix)
        if step is not None and step not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def load_state(folder: str | os.PathLike, state_file: str) -> dict:
    return torch.load(Path(folder) / state_file, weights_only=False)
