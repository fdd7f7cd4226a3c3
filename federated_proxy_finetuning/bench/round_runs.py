"""The round profile's measurements (scripts/profile_round.py) on the text demo's FedPFT run, built through the shared
start-up (startup.py) with alignment in every round: rounds timed by part, the suite's evaluation and alignment against
plain loops of the same work, and one more round under a profiler."""

from __future__ import annotations

import cProfile
import dataclasses
import io
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .round_parts import comparison, interleaved, round_split

# the text demo's federated flags (scripts/demo.sh, scripts/embedded/common.sh FL_TEXT and MAX_LENGTH[bbc])
DEMO_FLAGS = (
    "--task_name bbc --num_clients 20 --proportion 0.2 --learning_rate 8e-4 --lr_scheduler_type 2 --num_epochs 1 "
    "--per_device_train_batch_size 16 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 48 "
    "--eval_interval 1 --method pft --align_interval 1 --align_epochs 0.1 --align_retained_ratio 0.5 "
    "--align_batch_size 16 --align_grad_accum_start 4 --align_grad_accum_min 1 --align_block_size 128"
).split() + ["--distill_dataset2_path", ""]


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


def profile(args, out: Path) -> tuple[dict, str | None]:
    """(result, profile table or None) of the round profile `args` ask for; a profile's files go beside `out`."""
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
    return result, profile_text
