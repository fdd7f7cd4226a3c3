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
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .cli import UsageError
from .signals import deferred

logger = logging.getLogger(__name__)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see a half-written file."""
    path = Path(path)
    with deferred():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
        yield tmp  # a stop in here leaves `target` as it was
        with deferred():  # but not between removing the old `target` and renaming the new one into place
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


# ----------------------------------------------------------------------------------------------- outputs
def check_writable(path: str | os.PathLike, what: str, needed_bytes: int = 0) -> None:
    """Refuse, before anything is written, an output `path` that cannot be created or written: a part of it that
    is a file, a folder that refuses a new file (read-only, no permission), a name the file system cannot hold,
    or a disk with less than `needed_bytes` free."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is not a directory")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    too_long = [part for part in path.relative_to(existing).parts if len(os.fsencode(part)) > name_max]
    if too_long:
        raise UsageError(f"{what} {path}: the name {too_long[0][:40]}... is longer than {name_max} bytes")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be written: {existing} refuses new files ({exc.strerror})") from exc
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise UsageError(
            f"{what} {path}: only {free / 1e6:.1f} MB free on its disk, about {needed_bytes / 1e6:.1f} MB needed"
        )


class RunLock:
    """One run per output folder: a lock file `.<folder name>.lock` beside the folder, holding the owner's host and
    pid, created exclusively. A lock whose process is gone (on this host) is stale and taken over."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self.held = False

    def owner(self) -> str | None:
        """Who holds the lock ("pid N on HOST"), or None when it is free or stale."""
        try:
            host, pid = self.path.read_text().split()[:2]
            pid = int(pid)
        except (OSError, ValueError):
            return None
        if host == socket.gethostname() and not _alive(pid):
            return None
        return f"pid {pid} on {host}"

    def check(self) -> None:
        owner = self.owner()
        if owner is not None and not self.held:
            raise UsageError(f"{self.folder} is in use by another run ({owner}; lock file {self.path})")

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()  # raises unless stale
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return
        self.check()

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
