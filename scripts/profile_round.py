"""Where the time of one federated round goes (ARCHITECTURE §5: everything around the clients should be a small share).

Builds the text demo's FedPFT run (scripts/demo.sh: MiniLM FM, the distilled sub-FM, BBC headlines, 20 clients, 4 per
round, batch 16, LoRA r=8 alpha=48, alignment on the BBC public corpus) with alignment in every round, runs round 0
as a warm-up and then `--repeats` rounds, and reports three things:

1. the round's wall time by part (from the run's timings.jsonl): client training, aggregation + plug-in, evaluation
   (FM and sub-FM), alignment, checkpoint, logging (metrics.jsonl + summary.json) and the rest; medians over rounds;
2. evaluation throughput of the suite's `client.evaluate` against a plain transformers forward of the same model on
   the same batches (`model(**batch)` under torch.no_grad in eval mode, batches collated beforehand, padded as the
   suite pads: to the longest row of the batch, rows truncated to --max_length at tokenisation);
3. one alignment (`align.align`, a fixed number of optimiser steps) against the same number of plain distillation
   steps of the same shape (teacher forward under no_grad, student forward + backward on the normalised hidden-state
   MSE of the compressed layers, AdamW step on the same FFN parameters).

The comparisons interleave suite and plain runs `--repeats` times and report medians. Prints a markdown table and
writes JSON (default benchmarks/round_profile.json). `--profile cprofile|torch` profiles one more round.

    python scripts/profile_round.py --quick --threads 1      # about a minute on one CPU thread
    python scripts/profile_round.py --repeats 5 --profile cprofile

On a machine whose cores are busy with other work, pass --threads 1: torch's default of one thread per core then
oversubscribes the cores and every part slows down erratically (many times over, on two busy cores).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from federated_proxy_finetuning.bench.round_parts import markdown
from federated_proxy_finetuning.bench.round_runs import profile

FM = "pretrain_models/all-MiniLM-L6-v2"
SUB_FM = "results/embedded/models/minilm/sub-distilled"  # built by scripts/embedded/table1.sh


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_checkpoint", default=FM)
    p.add_argument(
        "--sub_model_checkpoint",
        default=SUB_FM,
        help="the distilled MiniLM sub-FM (read only): the embedded tables' (bash scripts/embedded/table1.sh builds it) "
        "or the demo's, demo-output/sub_model/sub-all-MiniLM-L6-v2-retained05-r1384-r2384-distilled",
    )
    p.add_argument("--dataset_path", default="datasets")
    p.add_argument("--corpus_path", default="datasets/bbc-corpus", help="public corpus of the alignment")
    p.add_argument("--max_length", type=int, default=64, help="the demo's bbc value (common.sh MAX_LENGTH[bbc])")
    p.add_argument("--eval_batch_size", type=int, default=16, help="fedtune's default --per_device_eval_batch_size")
    p.add_argument("--eval_examples", type=int, default=0, help="evaluated examples (0: the whole validation split)")
    p.add_argument("--repeats", type=int, default=3, help="rounds timed, and repeats of each comparison")
    p.add_argument("--align_steps", type=int, default=3, help="optimiser steps per timed alignment")
    p.add_argument(
        "--quick",
        action="store_true",
        help="64 eval examples, 2 repeats, 1 alignment step; clients train 0.25 epochs, align 0.02 epochs",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--profile", choices=("none", "cprofile", "torch"), default="none")
    p.add_argument("--top", type=int, default=40, help="rows of the profile table")
    p.add_argument("--out", default="benchmarks/round_profile.json")
    args = p.parse_args(argv)
    for flag, what in (("model_checkpoint", "bash scripts/setup.sh"), ("sub_model_checkpoint", "see --help")):
        if not (Path(getattr(args, flag)) / "config.json").is_file():
            p.error(f"--{flag} {getattr(args, flag)} is not a model folder ({what})")
    if args.quick:
        args.eval_examples, args.repeats, args.align_steps = args.eval_examples or 64, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result, profile_text = profile(args, out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if not result["eval"]["same_predictions"]:
        print("warning: the plain forward's predictions differ from the suite's")
    if profile_text:
        print("\n" + profile_text)
    print(f"\nwritten to {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
