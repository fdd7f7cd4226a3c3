"""Markdown versions of the paper's four tables from finished experiment result folders, with the paper's numbers
beside ours and each ordering the paper claims judged on paired per-seed differences; and, when its runs exist,
Table 5, beyond the paper (a decoder LLM on wiki-qa: topic accuracy, answer loss and perplexity, the paper's main
ordering judged as our hypothesis on both).

    python scripts/make_tables.py [--root results/embedded] [--tables 1 2 3 4 5] [--out FILE.md] [--bullets]

Layout read: <root>/table<N>/<model>/<task>/<setting>/<method>/ is one *cell*; below it the training program
writes <task_name>/<model folder>/<run>-seed<S>/ with config.json, metrics.jsonl and summary.json. Only runs whose
summary.json says finished=true enter the means and tests; the others are counted as unfinished. Each table is
shown as its main block and, when present, the block of the earlier BBC proxy tasks; each block is one family of
the Holm correction (federated_proxy_finetuning/report/verdicts.py). --bullets prints one sentence per judged
claim instead of the tables. Without --tables: Tables 1-4, and Table 5 when it has runs. The library functions
(load_runs, cell_stats, table_cells, orderings, render, verdict_bullets) also serve scripts/plot_results.py,
scripts/plots.ipynb and tests/test_make_tables.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from federated_proxy_finetuning.report.claim_lines import verdict_bullets
from federated_proxy_finetuning.report.markdown import render
from federated_proxy_finetuning.report.pages import write_pages
from federated_proxy_finetuning.report.paper import reported_tables
from federated_proxy_finetuning.report.runs import load_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="results/embedded", help="results root holding table1 ... table5")
    parser.add_argument(
        "--tables", type=int, nargs="+", choices=(1, 2, 3, 4, 5), help="default: 1 2 3 4, and 5 when it has runs"
    )
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    parser.add_argument("--bullets", action="store_true", help="print one sentence per judged claim, not the tables")
    parser.add_argument(
        "--write",
        action="store_true",
        help="regenerate --page (verdicts, tables, figures) and the generated part of --readme instead of printing",
    )
    parser.add_argument(
        "--readme", default="README.md", help="with --write: the README whose results part is generated"
    )
    parser.add_argument("--page", default="docs/results.md", help="with --write: the results page")
    parser.add_argument("--images", default="images", help="with --write: the folder of the figures")
    args = parser.parse_args(argv)
    root = Path(args.root)
    runs = load_runs(root) if root.is_dir() else pd.DataFrame()
    if runs.empty:
        print(
            f"error: no runs under {root} (expected {root}/table<N>/<model>/<task>/<setting>/<method>/...)",
            file=sys.stderr,
        )
        return 2
    tables = [f"table{n}" for n in args.tables] if args.tables else reported_tables(runs)
    if args.write:
        write_pages(root, runs, tables, Path(args.readme), Path(args.page), Path(args.images))
        print(f"wrote {args.page} and the results part of {args.readme}")
        return 0
    text = verdict_bullets(root, runs, tables) if args.bullets else render(root, runs, tables)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
