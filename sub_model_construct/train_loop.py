"""The one training loop (ARCHITECTURE §3), used by layer-level distillation, client training and alignment.

An optimiser step consumes one *effective batch* of `effective_batch_size` examples drawn from a seeded permutation.
It is cut into micro-batches of `micro_batch_size`; gradients are accumulated with each micro-batch weighted by its
share of the effective batch. For a loss that averages over examples (client cross-entropy) the step's gradient is
then the mean over the effective batch however it is cut; the distillation loss normalises by each micro-batch's
teacher mean square (as the reference's per-device batches do), so there the cut matters slightly.
With `data_parallel` set, process p computes micro-batches p, p+W, ... and the gradients are summed across processes:
the update equals the single-process one (to float tolerance). That is how the reference's
"per-device batch x processes x accumulation" effective batch keeps its meaning here (spec §5).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import get_scheduler

from .progress import Progress

logger = logging.getLogger(__name__)

LossFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops before the weights are touched. With data-parallel
    processes every process raises it at the same step (the losses are summed across them first)."""

    def __init__(self, desc: str, value: float, step: int, where: dict | None = None) -> None:
        self.desc, self.value, self.step, self.where = desc, value, step, dict(where or {})
        place = "".join(f", {k} {v}" for k, v in self.where.items())
        super().__init__(f"non-finite loss ({value}) in {desc}{place} at step {step}")


# Test hook: FEDPFT_TEST_NONFINITE="stage=<desc>[,step=N][,process=P][,round=R][,client=C]" turns the loss of the
# matching micro-batches of a training loop into NaN, so that the stop on a non-finite loss can be tested at a
# chosen place (one process of several, one client of a round). Unset, it changes nothing.
TEST_HOOK = "FEDPFT_TEST_NONFINITE"


def _injects_nonfinite(spec: str | None, desc: str, where: dict) -> bool:
    if not spec:
        return False
    wanted = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    return wanted.pop("stage", None) == desc and all(str(where.get(k)) == v for k, v in wanted.items())


@dataclass
class OptimConfig:
    learning_rate: float
    weight_decay: float = 0.0
    lr_scheduler_type: str = "constant"  # any transformers scheduler name: linear, cosine, constant, ...
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8


def steps_for(num_examples: int, effective_batch_size: int, epochs: float) -> int:
    """Optimiser steps for `epochs` (fractions allowed) passes; < 1e-3 epochs means exactly one step (spec §4.10)."""
    if epochs < 1e-3:
        return 1
    per_epoch = math.ceil(num_examples / effective_batch_size)
    return max(1, math.ceil(epochs * per_epoch))


def batch_plan(num_examples: int, effective_batch_size: int, seed: int, start_step: int = 0) -> Iterator[list[int]]:
    """Endless sequence of effective batches: a fresh seeded permutation per epoch, the last batch of an epoch may be
    smaller. Deterministic in (num_examples, batch size, seed), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(num_examples / effective_batch_size)
    step = 0
    while True:
        order = torch.randperm(num_examples, generator=generator).tolist()
        for b in range(per_epoch):
            if step >= start_step:
                yield order[b * effective_batch_size : (b + 1) * effective_batch_size]
            step += 1


def fetch(dataset, indices: Sequence[int]) -> list[dict]:
    """Rows of a datasets.Dataset (fast path) or any indexable collection."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(list(indices))
    return [dataset[i] for i in indices]


def make_optimizer(named_params: Sequence[tuple[str, nn.Parameter]], config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay is not applied to biases and LayerNorm weights (spec §3.4)."""
    decay = [p for n, p in named_params if not ("bias" in n or "norm" in n.lower())]
    no_decay = [p for n, p in named_params if "bias" in n or "norm" in n.lower()]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def over_batches(dataset, collate, batch_size: int, accelerator, step) -> list:
    """`step(batch)` of every batch of `dataset` (on the accelerator's device), the batches spread over the processes
    and the results gathered back in the dataset's order: data-parallel evaluation."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = []
    for b in list(range(0, len(dataset), batch_size))[rank::world]:
        batch = to_device(collate(fetch(dataset, range(b, min(b + batch_size, len(dataset))))), accelerator.device)
        mine.append((b, step(batch)))
    everything = gather_object(mine) if world > 1 else mine
    return [result for _, result in sorted(everything, key=lambda item: item[0])]


def _all_reduce_grads(params: Sequence[nn.Parameter], accelerator) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _optimizer_and_schedule(named_params, optim: OptimConfig, total_steps: int, resume_state: dict | None):
    """AdamW and its learning-rate schedule over the steps, restored from a checkpoint's state when resuming."""
    optimizer = make_optimizer(named_params, optim)
    warmup = math.ceil(optim.warmup_ratio * total_steps)
    scheduler = get_scheduler(
        optim.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
    return optimizer, scheduler


@dataclass
class _MicroBatches:
    """One optimiser step's forward and backward: this process's micro-batches of the effective batch, each
    gradient weighted by its share of the batch."""

    dataset: object
    collate: Callable[[list[dict]], dict]
    loss_fn: LossFn
    micro_batch_size: int
    device: torch.device
    rank: int
    world: int
    desc: str
    where: dict | None
    hook: str | None = field(default_factory=lambda: os.environ.get(TEST_HOOK))  # read once per loop

    def backward(self, indices, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(this process's share-weighted loss, its weighted loss parts) after the backward passes. A non-finite
        loss raises at once on one process; with several, it is added to the loss so every process sees it in the
        sum (no one waits for a process that stopped)."""
        hook = self.hook
        micro = [indices[i : i + self.micro_batch_size] for i in range(0, len(indices), self.micro_batch_size)]
        step_loss = torch.zeros((), device=self.device)
        parts_sum: dict[str, float] = {}
        for chunk in micro[self.rank :: self.world]:
            loss, parts = self.loss_fn(to_device(self.collate(fetch(self.dataset, chunk)), self.device))
            share = len(chunk) / len(indices)
            context = {**(self.where or {}), "step": step + 1, "process": self.rank}
            if hook and _injects_nonfinite(hook, self.desc, context):
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                if self.world == 1:
                    raise NonFiniteLossError(self.desc, loss.item(), step + 1, self.where)
                step_loss += loss.detach()  # the others learn of it from the summed loss below: no one waits
                break
            (loss * share).backward()
            step_loss += loss.detach() * share
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * share
        return step_loss, parts_sum


def _log_record(step: int, window: list[float], lr: float, grad_norm, parts: dict[str, float]) -> dict:
    """A log line of the loop: the mean loss since the last one, the learning rate, the gradient norm (when
    clipping) and the loss parts (on one process)."""
    record = {"step": step + 1, "loss": sum(window) / len(window), "learning_rate": lr}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record.update(parts)
    return record


def _sum_across_processes(params, step_loss: torch.Tensor, data_parallel, desc: str, step: int, where) -> torch.Tensor:
    """Sum the gradients and the step's loss over the data-parallel processes; every process raises on a
    non-finite sum, before the update."""
    _all_reduce_grads(params, data_parallel)
    step_loss = data_parallel.reduce(step_loss, reduction="sum")
    if not torch.isfinite(step_loss):
        raise NonFiniteLossError(desc, step_loss.item(), step + 1, where)
    return step_loss


def _update(params, optimizer, scheduler, max_grad_norm: float, grad_hook: Callable[[], None] | None):
    """The gradient hook, clipping, then one optimiser and schedule step. Returns (the gradient norm when clipping,
    else None; the learning rate the step used)."""
    if grad_hook is not None:
        grad_hook()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def _summary(history: list[dict], window: list[float], steps: int, last_loss: float, started: float) -> dict:
    """What `train` returns: the mean of the logged losses (of the unlogged ones when nothing was logged)."""
    losses = [h["loss"] for h in history] or window
    mean = sum(losses) / len(losses) if losses else float("nan")
    seconds = time.perf_counter() - started
    return {"steps": steps, "loss": mean, "last_loss": last_loss, "seconds": seconds, "history": history}


def train(
    named_params: Sequence[tuple[str, nn.Parameter]],
    dataset,
    collate: Callable[[list[dict]], dict],
    loss_fn: LossFn,
    *,
    optim: OptimConfig,
    total_steps: int,
    micro_batch_size: int,
    effective_batch_size: int,
    seed: int,
    device: torch.device,
    data_parallel=None,
    log_every: int = 0,
    log_fn: Callable[[dict], None] | None = None,
    on_step: Callable[[int, torch.optim.Optimizer, object], None] | None = None,
    start_step: int = 0,
    resume_state: dict | None = None,
    progress: bool = True,
    desc: str = "train",
    grad_hook: Callable[[], None] | None = None,
    where: dict | None = None,
) -> dict:
    """Run `total_steps` optimiser steps; return {"steps", "loss" (mean of logged losses), "seconds", "history"}.

    `data_parallel`: an Accelerator whose processes share this loop (server-side work); None for a loop that runs
    on one process only (a client). `grad_hook` runs after gradients are complete and before clipping (used by
    neuron-level alignment to zero the gradients of frozen neurons). `on_step(step, optimizer, scheduler)` runs after
    every step (checkpointing). Raises NonFiniteLossError on a NaN/inf loss, before the update, on every process
    of a data-parallel loop; `where` (e.g. round and client) goes into its message.
    """
    params = [p for _, p in named_params]
    optimizer, scheduler = _optimizer_and_schedule(named_params, optim, total_steps, resume_state)
    rank, world = (data_parallel.process_index, data_parallel.num_processes) if data_parallel else (0, 1)
    is_main = data_parallel is None or data_parallel.is_main_process
    plan = batch_plan(len(dataset), effective_batch_size, seed, start_step)
    history, window, last_loss, started = [], [], float("nan"), time.perf_counter()
    bar = Progress(total_steps, desc, enabled=progress and is_main, initial=start_step)
    batch = _MicroBatches(dataset, collate, loss_fn, micro_batch_size, device, rank, world, desc, where)
    try:
        for step in range(start_step, total_steps):
            step_loss, parts_sum = batch.backward(next(plan), step)
            if world > 1 and data_parallel is not None:
                step_loss = _sum_across_processes(params, step_loss, data_parallel, desc, step, where)
            grad_norm, lr = _update(params, optimizer, scheduler, optim.max_grad_norm, grad_hook)
            last_loss = step_loss.item()
            window.append(last_loss)
            bar.update(1, loss=f"{last_loss:.4f}")
            if log_every and ((step + 1) % log_every == 0 or step + 1 == total_steps):
                history.append(_log_record(step, window, lr, grad_norm, parts_sum if world == 1 else {}))
                window = []
                if log_fn is not None:
                    log_fn(history[-1])
            if on_step is not None:
                on_step(step + 1, optimizer, scheduler)
    finally:
        bar.close()  # also when stopped: an error line must not share a line with the bar
    return _summary(history, window, total_steps - start_step, last_loss, started)
