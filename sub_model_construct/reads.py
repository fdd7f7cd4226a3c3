"""Reading what a run is given (FM folders, tokenizers, datasets, caches, checkpoints) so that a file that cannot be
read ends the run with one line naming the file and what is wrong with it, before anything is written.

The loaders of transformers, safetensors, datasets and torch raise many exception types for a damaged file
(OSError, ValueError, JSONDecodeError, SafetensorError, ArrowInvalid, UnpicklingError, ...): `reading(path)` turns
any of them into a `ReadError` (a UsageError, so the command lines print it as one `error:` line).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .cli import UsageError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MANIFEST = ".checksums.json"  # beside the files of a cache folder: what they held when written


class ReadError(UsageError):
    """A file or folder that exists but cannot be read as what it should be."""


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message alone says little."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Any error raised inside becomes one ReadError naming `path` ("<what> <path> cannot be read: ...")."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:  # the loaders raise many unrelated types for one damaged file
        raise ReadError(f"{what} {path} cannot be read ({reason(exc)})") from exc


def weights_file(folder: str | os.PathLike) -> Path:
    """The weights file of a transformers folder (the first that exists), for messages."""
    folder = Path(folder)
    return next((folder / name for name in WEIGHT_FILES if (folder / name).exists()), folder / WEIGHT_FILES[0])


def config(folder: str | os.PathLike, **kwargs):
    """`AutoConfig.from_pretrained(folder)`, or one line naming config.json."""
    from transformers import AutoConfig

    with reading(Path(folder) / "config.json", "model config"):
        return AutoConfig.from_pretrained(folder, **kwargs)


def pretrained(model_class, folder: str | os.PathLike, allow_missing: tuple[str, ...] = (), **kwargs):
    """`model_class.from_pretrained(folder)`, refusing a weights file that cannot be read or that lacks weights
    of the model (transformers would silently initialise them at random). Keys starting with one of
    `allow_missing` (a new classification head, a pooler the checkpoint does not ship) may be missing."""
    weights = weights_file(folder)
    with reading(weights, "weights file"):
        model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", ()) if not any(part in k for part in allow_missing)]
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    if missing or mismatched:
        found = (missing + mismatched)[:3]
        raise ReadError(
            f"weights file {weights} does not hold the weights of this model (missing or misshapen: {found})"
        )
    return model


def preprocessor(processor_class, folder: str | os.PathLike):
    """A tokenizer or image processor from `folder`, or one line naming the folder's files."""
    with reading(folder, "tokenizer/image-processor files in"):
        loaded = processor_class.from_pretrained(folder)
    if hasattr(loaded, "get_vocab") and not loaded.get_vocab():
        raise ReadError(f"tokenizer files in {folder} hold an empty vocabulary")
    return loaded


def json_file(path: str | os.PathLike, what: str):
    with reading(path, what):
        return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- cache checksums
def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | os.PathLike) -> None:
    """Record the size and digest of every file of a cache folder (called before the folder is renamed into
    place, so a cache without a manifest is one whose writing never finished)."""
    folder = Path(folder)
    entries = {str(p.relative_to(folder)): [p.stat().st_size, _digest(p)] for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps(entries, sort_keys=True))


def manifest_holds(folder: str | os.PathLike) -> bool:
    """Every file the cache folder's manifest lists is there, byte for byte (False for anything else: no manifest,
    a damaged one, a missing, truncated or altered file). Files added later (the `datasets` library writes its own
    cache files beside the data it memory-maps) do not count."""
    folder = Path(folder)
    try:
        entries = json.loads((folder / MANIFEST).read_text())
        return bool(entries) and all(
            (folder / name).stat().st_size == size and _digest(folder / name) == digest
            for name, (size, digest) in entries.items()
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return False
