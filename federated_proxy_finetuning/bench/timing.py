"""Timed training steps and eval forwards of client models, interleaved so that machine noise hits them alike, and
where a training step goes by operator (torch.profiler's self CPU time)."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def client_optimizer(model) -> torch.optim.Optimizer:
    """AdamW on what a client trains (LoRA and head): the parameters that require gradients."""
    return torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)


def train_step(model, batch, optimizer) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_train_step(model, batch, optimizer, device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    train_step(model, batch, optimizer)
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def time_forward(model, batch, device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    model(**batch)
    sync(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
        "all": values,
    }


def interleaved_times(models: dict, batch: dict, repeats: int, device: str, progress) -> dict:
    """Training-step and eval-forward seconds per model: one warm-up each, then `repeats` rounds in which every
    model takes one step in turn (so that machine noise hits them alike)."""
    optimizers = {k: client_optimizer(m) for k, m in models.items()}
    train = {k: [] for k in models}
    forward = {k: [] for k in models}
    for key, model in models.items():
        model.train()
        time_train_step(model, batch, optimizers[key], device)
        model.eval()
        time_forward(model, batch, device)
    for i in range(repeats):
        for key, model in models.items():
            model.train()
            train[key].append(time_train_step(model, batch, optimizers[key], device))
            model.eval()
            forward[key].append(time_forward(model, batch, device))
        progress(f"timing {i + 1}/{repeats}")
    return {k: {"train_step_seconds": spread(train[k]), "eval_forward_seconds": spread(forward[k])} for k in models}


# ------------------------------------------------------------------------------------------------ operators
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"})
OP_GROUPS = (
    ("matrix products (mm, addmm, bmm)", lambda op: op in MATMUL_OPS),
    ("dropout masks (bernoulli_)", lambda op: op == "aten::bernoulli_"),
    ("everything else (elementwise, softmax, LayerNorm, copies, AdamW)", lambda op: True),
)


def operator_profile(models: dict, batch: dict, steps: int, progress) -> dict:
    """Self CPU seconds per operator of one training step (torch.profiler), the mean of `steps` profiled steps per
    model taken in turn, and their sums by OP_GROUPS: which work the sub-FM's cut FFNs remove and which they leave."""
    from torch.profiler import ProfilerActivity, profile

    optimizers = {k: client_optimizer(m) for k, m in models.items()}
    ops = {k: {} for k in models}
    for key, model in models.items():  # warm-up: the optimiser's state and the allocator, outside the profile
        model.train()
        train_step(model, batch, optimizers[key])
    for i in range(steps):
        for key, model in models.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_step(model, batch, optimizers[key])
            for event in prof.key_averages():
                ops[key][event.key] = ops[key].get(event.key, 0.0) + event.self_cpu_time_total / 1e6 / steps
        progress(f"operator profile {i + 1}/{steps}")
    return {"steps": steps, "seconds_by_operator": ops, "seconds_by_group": group_seconds(ops)}


def group_seconds(ops: dict) -> dict:
    """Per model, the seconds of its operators summed by OP_GROUPS (each operator in the first group it fits)."""
    groups = {}
    for key, per_op in ops.items():
        sums = dict.fromkeys((name for name, _ in OP_GROUPS), 0.0)
        for op, seconds in per_op.items():
            sums[next(name for name, member in OP_GROUPS if member(op))] += seconds
        groups[key] = sums
    return groups
