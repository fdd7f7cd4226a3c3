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
import cProfile
import dataclasses
import io
import json
import logging
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FM = "pretrain_models/all-MiniLM-L6-v2"
SUB_FM = "results/embedded/models/minilm/sub-distilled"  # built by scripts/embedded/table1.sh
# the text demo's federated flags (scripts/demo.sh, scripts/embedded/common.sh FL_TEXT and MAX_LENGTH[bbc])
DEMO_FLAGS = (
    "--task_name bbc --num_clients 20 --proportion 0.2 --learning_rate 8e-4 --lr_scheduler_type 2 --num_epochs 1 "
    "--per_device_train_batch_size 16 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 48 "
    "--eval_interval 1 --method pft --align_interval 1 --align_epochs 0.1 --align_retained_ratio 0.5 "
    "--align_batch_size 16 --align_grad_accum_start 4 --align_grad_accum_min 1 --align_block_size 128"
).split() + ["--distill_dataset2_path", ""]
# the parts of a round, as timings.jsonl names them, and how the report names them
PARTS = {
    "train": "client training",
    "aggregate": "aggregation + plug-in",
    "eval": "evaluation",
    "align": "alignment",
    "checkpoint": "checkpoint",
    "log": "logging",
    "rest": "the rest",
}


# ----------------------------------------------------------------------------------------------- pure helpers
def round_split(timings: Sequence[dict]) -> dict:
    """Median seconds of each part over rounds, and its share of the median round. `rest` is computed per round as
    total minus the named parts, so a part missing from a record counts as 0 s."""
    if not timings:
        raise ValueError("no round timings to split")
    named = [p for p in PARTS if p != "rest"]
    total = statistics.median(t["total"] for t in timings)
    split = {}
    for part in PARTS:
        if part == "rest":
            values = [t["total"] - sum(t.get(p, 0.0) for p in named) for t in timings]
        else:
            values = [t.get(part, 0.0) for t in timings]
        seconds = statistics.median(values)
        split[part] = {"seconds": seconds, "percent": 100 * seconds / total if total else 0.0}
    return {"rounds": [t["round"] for t in timings], "total_seconds": total, "parts": split}


def comparison(suite: Sequence[float], plain: Sequence[float], work: float, unit: str) -> dict:
    """Medians of interleaved timings of the same `work` (examples, steps), their rates and suite/plain time ratio."""
    s, p = statistics.median(suite), statistics.median(plain)
    return {
        "unit": unit,
        "work": work,
        "suite_seconds": list(suite),
        "plain_seconds": list(plain),
        "suite_median_seconds": s,
        "plain_median_seconds": p,
        f"suite_{unit}_per_second": work / s if s else None,
        f"plain_{unit}_per_second": work / p if p else None,
        "time_ratio_suite_to_plain": s / p if p else None,
    }


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each callable (returning its own seconds) `repeats` times, round-robin, so machine noise hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def markdown(result: dict) -> str:
    split = result["round"]
    lines = [
        f"Round profile ({result['settings']['device']}, torch threads {result['settings']['torch_threads']}; "
        f"median of rounds {split['rounds']})",
        "",
        "| part | seconds | % of round |",
        "|---|---:|---:|",
    ]
    for part, name in PARTS.items():
        row = split["parts"][part]
        lines.append(f"| {name} | {row['seconds']:.3f} | {row['percent']:.1f} |")
    lines.append(f"| **total** | {split['total_seconds']:.3f} | 100.0 |")
    lines += ["", "| comparison | suite | plain | suite time / plain time |", "|---|---:|---:|---:|"]
    ev = result["eval"]
    lines.append(
        f"| evaluation, {ev['work']} examples, batch {ev['batch_size']} (examples/s) | "
        f"{ev['suite_examples_per_second']:.1f} | {ev['plain_examples_per_second']:.1f} | "
        f"{ev['time_ratio_suite_to_plain']:.3f} |"
    )
    al = result["align"]
    lines.append(
        f"| alignment, {al['work']} steps of {al['effective_batch_size']} blocks (steps/s) | "
        f"{al['suite_steps_per_second']:.3f} | {al['plain_steps_per_second']:.3f} | "
        f"{al['time_ratio_suite_to_plain']:.3f} |"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, root: Path):
    """(server, accelerator) of the demo's FedPFT run in `root`, aligning every round."""
    from federated_proxy_finetuning.fedtune import check_flags
    from federated_proxy_finetuning.modality import MODALITIES
    from federated_proxy_finetuning.startup import start

    rounds = max(2, args.repeats + (1 if args.profile != "none" else 0))
    argv = [
        *("--model_checkpoint", args.model_checkpoint, "--sub_model_checkpoint", args.sub_model_checkpoint),
        *("--dataset_path", args.dataset_path, "--distill_dataset1_path", args.corpus_path),
        *DEMO_FLAGS,
        *("--max_length", str(args.max_length), "--per_device_eval_batch_size", str(args.eval_batch_size)),
        *("--num_rounds", str(rounds), "--max_eval_samples", str(args.eval_examples)),
        *("--output_root", str(root / "fed-result"), "--task_root", str(root / "task")),
        *("--cache_dir", str(root / "cache"), "--overwrite", "True"),
    ]
    if args.quick:  # one local step per client, one or two alignment steps
        argv += ["--num_epochs", "0.25", "--align_epochs", "0.02"]
    server, accelerator, _ = start(check_flags(argv, "text"), MODALITIES["text"], log=False)
    return server, accelerator


def time_rounds(server, first: int, count: int) -> list[dict]:
    for r in range(first, first + count):
        server.round(r)
    return server.timings[-count:]


def eval_runs(server, accelerator) -> tuple[dict[str, Callable[[], float]], int, dict]:
    """(suite and plain evaluation callables, examples, facts) on the FM with this round's adapter plugged in."""
    from federated_proxy_finetuning.client import evaluate
    from sub_model_construct.train_loop import fetch, to_device

    f = server.f
    model, task, size = f.fm, f.task, f.settings.per_device_eval_batch_size
    dataset = task.eval_splits[""]
    device = accelerator.device
    batches = [
        to_device(task.collate_fn(fetch(dataset, range(b, min(b + size, len(dataset))))), device)
        for b in range(0, len(dataset), size)
    ]
    plain_preds: list[torch.Tensor] = []

    def suite() -> float:
        synchronize(device)
        start = time.perf_counter()
        evaluate(model, task, size, accelerator)
        synchronize(device)
        return time.perf_counter() - start

    def plain() -> float:
        plain_preds.clear()
        model.eval()
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                plain_preds.append(model(**batch).logits.argmax(-1))
        synchronize(device)
        seconds = time.perf_counter() - start
        model.train()
        return seconds

    def check() -> dict:
        from federated_proxy_finetuning.client import predict

        preds, *_ = predict(model, dataset, task.collate_fn, size, accelerator)
        same = bool((torch.cat(plain_preds).cpu().numpy() == preds).all())
        lengths = [int(b["input_ids"].shape[1]) for b in batches]
        return {"batch_size": size, "same_predictions": same, "padded_lengths": lengths}

    return {"suite": suite, "plain": plain}, len(dataset), {"check": check}


def align_runs(server, accelerator, steps: int) -> tuple[dict[str, Callable[[], float]], dict]:
    """(suite and plain alignment callables, facts): `steps` optimiser steps of the demo's first alignment shape
    (accumulation halved once from its start), frozen neurons drawn from random zero-activation rates."""
    from federated_proxy_finetuning.align import align, alignment_parameters, next_grad_accum, restoring_modes
    from sub_model_construct.distill_model import prepare_for_distillation
    from sub_model_construct.families import backbone, encoder_layers, family_of
    from sub_model_construct.train_loop import fetch, to_device

    f, aligner = server.f, server.f.aligner
    teacher, student, device = f.fm, f.client_model, accelerator.device
    settings = dataclasses.replace(aligner.settings, epochs=1.0)
    accum = next_grad_accum(settings.grad_accum_start, settings.grad_accum_min, aligner.settings.epochs)
    effective = settings.batch_size * accum * accelerator.num_processes
    data = aligner.data.select(range(steps * effective))  # one epoch of this = exactly `steps` steps
    family = family_of(backbone(student).config)
    blocks = encoder_layers(student, family)
    generator = torch.Generator().manual_seed(0)
    rates = {i: torch.rand(family.ffn.width(blocks[i]), generator=generator) for i in aligner.layers}
    micro = [
        to_device(aligner.collate(fetch(data, range(b, b + settings.batch_size))), device)
        for b in range(0, len(data), settings.batch_size)
    ]

    def suite() -> float:
        synchronize(device)
        start = time.perf_counter()
        align(teacher, student, aligner.pairs, rates, data, aligner.collate, settings, accum, seed=0,
              accelerator=accelerator, max_grad_norm=aligner.max_grad_norm)  # fmt: skip
        synchronize(device)
        return time.perf_counter() - start

    def plain() -> float:
        with restoring_modes(teacher, student):
            params = [p for _, p in alignment_parameters(student, family, aligner.layers)]
            prepare_for_distillation(teacher, student, params)
            optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
            t_net, s_net = backbone(teacher), backbone(student)
            synchronize(device)
            start = time.perf_counter()
            for step in range(steps):
                for batch in micro[step * accum : (step + 1) * accum]:
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    with torch.no_grad():
                        t_hidden = t_net(**inputs, output_hidden_states=True).hidden_states
                    s_hidden = s_net(**inputs, output_hidden_states=True).hidden_states
                    loss = torch.stack(
                        [(t_hidden[t + 1] - s_hidden[s + 1]).pow(2).mean() / t_hidden[t + 1].pow(2).mean()
                         for t, s in aligner.pairs]
                    ).mean()  # fmt: skip
                    (loss / accum).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            return time.perf_counter() - start

    return {"suite": suite, "plain": plain}, {"effective_batch_size": effective, "grad_accum_steps": accum}


def profile_round(server, r: int, kind: str, out: Path, top: int) -> str:
    """One more round under cProfile (pstats file next to the JSON) or torch.profiler; the top of its table."""
    if kind == "cprofile":
        profiler = cProfile.Profile()
        profiler.runcall(server.round, r)
        path = out.with_suffix(".prof")
        profiler.dump_stats(path)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
        return f"cProfile of round {r} (pstats file {path}):\n{text.getvalue()}"
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        server.round(r)
    path = out.with_suffix(".trace.json")
    prof.export_chrome_trace(str(path))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return f"torch.profiler of round {r} (trace {path}):\n{table}"


def main(argv: list[str] | None = None) -> int:
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
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="round-profile-") as tmp:
        started = time.perf_counter()
        server, accelerator = build(args, Path(tmp))
        try:
            server.round_zero()  # warm-up: first evaluation and checkpoint
            rounds = time_rounds(server, 1, args.repeats)
            eval_calls, examples, extra = eval_runs(server, accelerator)
            eval_times = interleaved(eval_calls, args.repeats)
            eval_result = {**comparison(eval_times["suite"], eval_times["plain"], examples, "examples"),
                           **extra["check"]()}  # fmt: skip
            align_calls, align_facts = align_runs(server, accelerator, args.align_steps)
            align_times = interleaved(align_calls, args.repeats)
            align_result = {**comparison(align_times["suite"], align_times["plain"], args.align_steps, "steps"),
                            **align_facts}  # fmt: skip
            profile_text = None
            if args.profile != "none":
                profile_text = profile_round(server, args.repeats + 1, args.profile, out, args.top)
        finally:
            server.f.run.lock.release()
        result = {
            "settings": {
                **{k: v for k, v in vars(args).items() if k not in ("out", "top")},
                "device": str(accelerator.device),
                "torch_threads": torch.get_num_threads(),
                "fedtune_flags": DEMO_FLAGS,
            },
            "round": round_split(rounds),
            "round_timings": rounds,
            "eval": eval_result,
            "align": align_result,
            "seconds": time.perf_counter() - started,
        }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if not eval_result["same_predictions"]:
        print("warning: the plain forward's predictions differ from the suite's")
    if profile_text:
        print("\n" + profile_text)
    print(f"\nwritten to {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
