"""Fetch the paper's assets into the layout distill.py, fedtune.py and scripts/paper/ read.

    python scripts/fetch_paper_assets.py                      # every fetchable asset
    python scripts/fetch_paper_assets.py --only roberta-base glue bookcorpus wikipedia
    python scripts/fetch_paper_assets.py --list               # names, folders, sources, sizes, what is present

FMs go to pretrain_models/<name>/ (transformers folders: config, safetensors weights, tokenizer or image-processor
files); tasks and corpora to datasets/<name>/ as `save_to_disk` DatasetDicts, GLUE as one folder per task
(datasets/glue/<task>, the first layout federated_proxy_finetuning/tasks.py tries; sub_model_construct/corpus.py
reads bookcorpus/ and wikipedia/ with `load_from_disk` too).

Idempotent: an asset whose folder exists (fetched here, with a `.complete` marker naming its source, or placed by
hand) is skipped. A fetch is written to `<folder>.partial` and renamed when complete, so an interrupted one is
redone (model downloads and the datasets cache resume). Needs the Hugging Face Hub (or the mirror in HF_ENDPOINT):
without it the script stops after one short probe, printing for each requested asset where to place it by hand,
and exits 1. HF_HUB_OFFLINE=1 counts as no network. ImageNet (the ViT's public corpus) is listed but never fetched:
its licence requires a manual download.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]  # config, weights, tokenizer/processor; no .bin/tf/flax
MARKER = ".complete"


class FetchError(RuntimeError):
    """An asset that could not be fetched from any of its sources."""


@dataclass(frozen=True)
class Source:
    """One way to get an asset: a Hub model repo, a Hub dataset (repo + config), or parquet files on the Hub."""

    kind: str  # "model" | "dataset" | "parquet"
    path: str  # repo id, or an hf:// glob of parquet files
    config: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.path}" + (f" ({self.config})" if self.config else "")


@dataclass(frozen=True)
class Asset:
    name: str
    folder: str  # relative to the repository root
    sources: tuple[Source, ...]  # tried in order; empty = manual only
    size: str  # approximate download
    what: str  # for the by-hand instructions

    @property
    def manual(self) -> bool:
        return not self.sources


def _model(name: str, repo: str, size: str) -> Asset:
    what = f"the transformers folder of {repo} (see pretrain_models/README.md)"
    return Asset(name, f"pretrain_models/{name}", (Source("model", repo),), size, what)


def _dataset(name: str, folder: str, sources: tuple[Source, ...], size: str, what: str) -> Asset:
    return Asset(name, folder, sources, size, f"{what} as a save_to_disk DatasetDict (see datasets/README.md)")


def _glue(task: str, size: str) -> Asset:
    sources = (Source("dataset", "nyu-mll/glue", task),)
    return _dataset(task, f"datasets/glue/{task}", sources, size, f"GLUE {task} (nyu-mll/glue, config {task})")


ASSETS: tuple[Asset, ...] = (
    _model("roberta-base", "FacebookAI/roberta-base", "0.5 GB"),
    # the paper says BERT-base and ViT-base; the exact checkpoints are not stated (spec §7)
    _model("bert-base-uncased", "google-bert/bert-base-uncased", "0.4 GB"),
    _model("vit-base-patch16-224-in21k", "google/vit-base-patch16-224-in21k", "0.4 GB"),
    _glue("sst2", "5 MB"),
    _glue("qnli", "30 MB"),
    _glue("mnli", "60 MB"),
    _glue("qqp", "45 MB"),
    _dataset("cifar-10", "datasets/cifar-10", (Source("dataset", "uoft-cs/cifar10"),), "0.15 GB", "uoft-cs/cifar10"),
    _dataset(
        "cifar-100", "datasets/cifar-100", (Source("dataset", "uoft-cs/cifar100"),), "0.15 GB", "uoft-cs/cifar100"
    ),
    # train 7,169 / test 1,020, columns image + label: the train/test layout the reference's Flowers path expects
    _dataset(
        "flowers-102",
        "datasets/flowers-102",
        (Source("dataset", "nelorth/oxford-flowers"),),
        "0.35 GB",
        "Oxford Flowers-102 (nelorth/oxford-flowers)",
    ),
    _dataset(
        "bookcorpus",
        "datasets/bookcorpus",
        (
            Source("dataset", "bookcorpus/bookcorpus"),
            Source(
                "parquet", "hf://datasets/bookcorpus/bookcorpus@refs%2Fconvert%2Fparquet/plain_text/train/*.parquet"
            ),
            Source("dataset", "SamuelYang/bookcorpus"),  # a mirror with the original's 74,004,228 rows
        ),
        "1.2 GB (5 GB on disk)",
        "BookCorpus (HF bookcorpus, column text)",
    ),
    _dataset(
        "wikipedia",
        "datasets/wikipedia",
        (
            Source("parquet", "hf://datasets/legacy-datasets/wikipedia/data/20220301.en/*.parquet"),
            Source("parquet", "hf://datasets/wikipedia/data/20220301.en/*.parquet"),
        ),
        "11 GB (20 GB on disk)",
        "English Wikipedia 20220301.en (HF wikipedia, columns id/url/title/text)",
    ),
    Asset(
        "imagenet",
        "datasets/IMAGENET",
        (),
        "150 GB, manual",
        "ILSVRC-2012 train (ImageFolder layout IMAGENET/train/<class>/*.JPEG; see datasets/README.md)",
    ),
)
GROUPS = {
    "glue": ("sst2", "qnli", "mnli", "qqp"),
    "models": ("roberta-base", "bert-base-uncased", "vit-base-patch16-224-in21k"),
    "corpora": ("bookcorpus", "wikipedia"),
    "vision": ("vit-base-patch16-224-in21k", "cifar-10", "cifar-100", "flowers-102"),
}
BY_NAME = {a.name: a for a in ASSETS}


def select(names: list[str] | None) -> list[Asset]:
    """The requested assets in table order; all fetchable ones when `names` is None."""
    if names is None:
        return [a for a in ASSETS if not a.manual]
    wanted: set[str] = set()
    for name in names:
        if name not in BY_NAME and name not in GROUPS:
            raise SystemExit(f"error: unknown asset {name!r}; known: {', '.join([*BY_NAME, *GROUPS])}")
        wanted.update(GROUPS.get(name, (name,)))
    return [a for a in ASSETS if a.name in wanted]


def is_present(asset: Asset, root: Path) -> bool:
    """Fetched here (marker) or placed by hand (a non-empty folder): either way, not ours to touch."""
    folder = root / asset.folder
    return folder.is_dir() and any(folder.iterdir())


def probe(endpoint: str, timeout: float) -> str | None:
    """None when `endpoint` answers at all (any HTTP status), else why not; `timeout` bounds the whole attempt,
    name resolution included, so an offline machine fails in seconds instead of per-asset retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    outcome: dict[str, str] = {}

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError:
            pass  # it answered
        except (OSError, ValueError) as exc:
            outcome["error"] = str(getattr(exc, "reason", exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"no answer within {timeout:g} s"
    return outcome.get("error")


def _fetch_model(source: Source, partial: Path) -> None:
    from huggingface_hub import snapshot_download

    # the partial folder is kept between attempts: snapshot_download resumes into it
    snapshot_download(source.path, local_dir=partial, allow_patterns=MODEL_FILES, ignore_patterns=["*/*"])
    if not (partial / "config.json").is_file() or not any(partial.glob("*.safetensors")):
        raise FetchError(f"{source.path} has no config.json + safetensors weights")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping


def _fetch_dataset(source: Source, partial: Path, cache: Path) -> None:
    import datasets

    if source.kind == "parquet":
        data = datasets.load_dataset("parquet", data_files={"train": source.path}, cache_dir=str(cache))
    else:
        data = datasets.load_dataset(source.path, source.config, cache_dir=str(cache))
    if not isinstance(data, datasets.DatasetDict):
        data = datasets.DatasetDict({"train": data})
    shutil.rmtree(partial, ignore_errors=True)
    data.save_to_disk(str(partial))


def fetch(asset: Asset, root: Path) -> Source:
    """Try the asset's sources in order; on success the folder holds the asset and its marker."""
    if asset.manual:
        raise FetchError("cannot be fetched automatically (licence)")
    target = root / asset.folder
    partial = target.with_name(target.name + ".partial")
    cache = root / "datasets" / ".fetch-cache" / asset.name
    failures = []
    for source in asset.sources:
        try:
            if source.kind == "model":
                _fetch_model(source, partial)
            else:
                _fetch_dataset(source, partial, cache)
        except Exception as exc:  # hub and datasets raise many types; the next source may still work
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            failures.append(f"{source.describe()}: {first_line}")
            continue
        os.replace(partial, target)
        marker = {"source": source.describe(), "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (target / MARKER).write_text(json.dumps(marker) + "\n")
        shutil.rmtree(cache, ignore_errors=True)
        return source
    raise FetchError("; ".join(failures))


def by_hand(asset: Asset) -> str:
    return f"place {asset.what} in {asset.folder}/ by hand"


def print_list(root: Path) -> None:
    rows = [("name", "status", "folder", "source", "download")]
    for a in ASSETS:
        status = "present" if is_present(a, root) else ("manual" if a.manual else "missing")
        source = a.sources[0].describe() if a.sources else "manual download (licence)"
        if len(a.sources) > 1:
            source += f" (+{len(a.sources) - 1} fallback)"
        rows.append((a.name, status, a.folder, source, a.size))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    print("groups: " + "; ".join(f"{g} = {' '.join(names)}" for g, names in GROUPS.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="assets or groups to fetch (default: all but imagenet)")
    p.add_argument("--list", action="store_true", help="list the assets and which are present, fetch nothing")
    p.add_argument("--root", type=Path, default=ROOT, help="repository root to fetch into (default: this checkout)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds the network probe may take")
    args = p.parse_args(argv)
    if args.list:
        print_list(args.root)
        return 0
    todo = []
    for asset in select(args.only):
        if is_present(asset, args.root):
            print(f"ok: {asset.name} present in {asset.folder}")
        else:
            todo.append(asset)
    if not todo:
        return 0
    # short timeouts for the hub client too (read when huggingface_hub is imported, lazily, below)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "60")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    offline = probe(endpoint, args.timeout)
    failed = 0
    for asset in todo:
        if offline and not asset.manual:
            reason = f"{endpoint} unreachable: {offline}"
        else:
            try:
                source = fetch(asset, args.root)
                print(f"fetched: {asset.name} from {source.describe()} into {asset.folder}")
                continue
            except FetchError as exc:
                reason = str(exc)
        print(f"error: {asset.name} not fetched ({reason}); {by_hand(asset)}", file=sys.stderr)
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
