"""PNG figures from finished experiment result folders (the layout scripts/make_tables.py reads).

    python scripts/plot_results.py [--root results/embedded] [--out images]

Writes, with <prefix> the root's folder name (e.g. embedded) and one figure per model and task:
  <prefix>_table1_<model>_<task>_rounds.png   FM accuracy per round, mean over seeds with a min–max band,
                                              alignment rounds of a FedPFT run as vertical lines
  <prefix>_table1_<model>_<task>_bytes.png    FM accuracy against cumulative MB sent + received
  <prefix>_table2_<model>_<task>_alpha.png    final accuracy against Dirichlet α, ± seed std
  <prefix>_table3_<model>_<task>_ablation.png final accuracy per ablation method, ± seed std
  <prefix>_table4_<model>_<task>_t_p.png      final accuracy against t and against p, ± seed std
  <prefix>_table5_<model>_<task>_curves.png   (beyond the paper, a decoder LLM) topic accuracy and answer loss per
                                              round, mean over seeds with a min–max band; _curves-<setting>.png
                                              for a setting other than IID (e.g. dir1)
Figures whose data is missing are skipped with a note. Only finished runs are drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from federated_proxy_finetuning.report.figures import write_plots
from federated_proxy_finetuning.report.runs import load_runs


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="results/embedded", help="results root holding table1 ... table5")
    parser.add_argument("--out", default="images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir() or load_runs(args.root).empty:
        print(f"error: no runs under {args.root} (expected {args.root}/table<N>/<model>/<task>/...)", file=sys.stderr)
        return 2
    written, notes = write_plots(args.root, args.out)
    for note in notes:
        print(note)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
