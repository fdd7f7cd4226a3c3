"""A client's round (spec §4.6, §4.8): load the global adapter into the shared client model, train it locally,
hand back a copy of its adapter (and, in alignment rounds, its zero-activation counts); and the evaluation of a
model on the task's eval splits (spec §4.11), data-parallel over the processes.

One client model object per process (the sub-FM with LoRA, the emulator, or the FM for FedPETuning), never a copy
per client. All randomness of a client's round is a function of (seed, round, client), so results do not depend on
the number of processes or on a resume.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sub_model_construct.train_loop import NonFiniteLossError, OptimConfig, over_batches, steps_for, train

from .adapters import adapter_state, load_adapter
from .align import counting_zero_activations
from .tasks import TaskData


def client_seed(seed: int, round_index: int, client: int) -> int:
    return (seed * 1_000_003 + round_index * 10_007 + client) % (2**31 - 1)


def round_learning_rate(kind: int, eta0: float, r: int, rounds: int, decay: float, reference_type2: bool) -> float:
    """Client learning rate of round r (1-based), spec §4.8.

    Type 2 is a linear decay across rounds. The reference skips the (R-1)/R step and ends on eta0/R through a
    falsy-zero guard (spec §6.6); by default we decay without the skip: eta0 * (R - r + 1) / R, which also ends on
    eta0/R. `reference_type2` reproduces the reference sequence exactly."""
    if kind == -1:
        return eta0
    if kind == 0:
        return eta0 * decay ** (r - 1)
    if kind == 1:
        return eta0 if r == 1 else eta0 / (r + 1)
    if kind == 2:
        if not reference_type2:
            return eta0 * (rounds - r + 1) / rounds
        if r == 1:
            return eta0
        return eta0 * (rounds - r) / rounds if r < rounds else eta0 / rounds
    raise ValueError(f"unknown lr_scheduler_type {kind}")


@dataclass
class ClientUpdate:
    client: int
    adapter: dict[str, torch.Tensor] | None
    num_examples: int
    loss: float
    seconds: float
    stats: dict | None = None
    error: str | None = None


@dataclass
class ClientTrainer:
    """Local training of one client on the shared client model (spec §4.6): fresh AdamW (no weight decay), constant
    lr, `num_epochs` passes over the client's data in effective batches of per_device x processes x accumulation."""

    model: object
    datasets: list  # one datasets.Dataset per client
    collate: object
    micro_batch_size: int
    effective_batch_size: int
    num_epochs: float
    max_grad_norm: float
    device: torch.device
    count_layers: list[int] = field(default_factory=list)  # compressed layers whose zero activations are counted
    count_threshold: float = 0.0  # an activation below it (in magnitude) counts as zero; 0: exactly zero

    @property
    def total_examples(self) -> int:
        return sum(len(d) for d in self.datasets)

    def train(self, client: int, round_index: int, lr: float, adapter: dict, seed: int, collect: bool) -> ClientUpdate:
        """One client's local training from `adapter` (the global one, in the client model's layer names)."""
        started = time.perf_counter()
        data = self.datasets[client]
        load_adapter(self.model, adapter)
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        local_seed = client_seed(seed, round_index, client)
        torch.manual_seed(local_seed)  # dropout masks
        steps = steps_for(len(data), self.effective_batch_size, self.num_epochs)
        optim = OptimConfig(
            learning_rate=lr, weight_decay=0.0, lr_scheduler_type="constant", max_grad_norm=self.max_grad_norm
        )

        def loss_fn(batch):
            return self.model(**batch).loss, {}

        try:
            with counting_zero_activations(self.model, self.count_layers, collect, self.count_threshold) as stats:
                result = train(
                    named,
                    data,
                    self.collate,
                    loss_fn,
                    optim=optim,
                    total_steps=steps,
                    micro_batch_size=self.micro_batch_size,
                    effective_batch_size=self.effective_batch_size,
                    seed=local_seed,
                    device=self.device,
                    progress=False,
                    log_every=steps,
                    desc="client training",
                    where={"round": round_index, "client": client},
                )
        except NonFiniteLossError as exc:
            return ClientUpdate(client, None, len(data), float("nan"), time.perf_counter() - started, error=str(exc))
        seconds = time.perf_counter() - started
        stats = dict(stats) if collect else None
        return ClientUpdate(client, adapter_state(self.model), len(data), result["loss"], seconds, stats=stats)


# ----------------------------------------------------------------------------------------------- evaluation
def eval_prefix(split_key: str) -> str:
    """Metric-name prefix of an eval split (spec §4.11): "" -> "eval_", "matched" -> "eval_matched_"."""
    return f"eval_{split_key}_" if split_key else "eval_"


def compute_metrics(preds: np.ndarray, labels: np.ndarray, metric_names: Sequence[str]) -> dict[str, float]:
    """Accuracy and (binary, positive class 1) F1 of argmax predictions, as fractions in [0, 1] (spec §4.11).
    F1 falls back to macro averaging if more than two classes occur."""
    from sklearn.metrics import accuracy_score, f1_score

    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or labels.size == 0:
        raise ValueError(f"predictions {preds.shape} and labels {labels.shape} must be equal-shaped and non-empty")
    out: dict[str, float] = {}
    for name in metric_names:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            binary = set(np.union1d(preds, labels).tolist()) <= {0, 1}
            out[name] = float(f1_score(labels, preds, average="binary" if binary else "macro", zero_division=0))
        else:
            raise ValueError(f"unknown metric {name!r}; supported: accuracy, f1")
    return out


@torch.no_grad()
def predict(model, dataset, collate, batch_size: int, accelerator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(predictions, labels, mean loss, seconds) of `model` on `dataset`; batches are spread over processes and
    gathered back in order."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()

    def step(batch):
        out, labels = model(**batch), batch["labels"]
        return out.logits.argmax(-1).cpu().numpy(), labels.cpu().numpy(), out.loss.item() * len(labels)

    everything = over_batches(dataset, collate, batch_size, accelerator, step)
    model.train(was_training)
    preds = np.concatenate([p for p, _, _ in everything]) if everything else np.array([])
    labels = np.concatenate([y for _, y, _ in everything]) if everything else np.array([])
    loss = sum(s for *_, s in everything) / max(len(labels), 1)
    return preds, labels, loss, time.perf_counter() - started


def confusion(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> list[list[int]]:
    """Counts of (true label i, predicted label j) as rows i, columns j: what an evaluation predicted, so that a
    model predicting one class is read from the results (its column sums have one non-zero entry)."""
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return counts.tolist()


def evaluate(model, task: TaskData, batch_size: int, accelerator) -> dict:
    """Metrics of `model` as it is (whatever adapter it carries) on every eval split of the task (spec §4.11), with
    each split's confusion matrix (`eval_confusion`: rows true label, columns predicted label)."""
    record, seconds, count = {}, 0.0, 0
    for key, dataset in task.eval_splits.items():
        preds, labels, loss, secs = predict(model, dataset, task.collate_fn, batch_size, accelerator)
        prefix = eval_prefix(key)
        for name, value in compute_metrics(preds, labels, task.metric_names).items():
            record[f"{prefix}{name}"] = value
        record[f"{prefix}loss"] = loss
        record[f"{prefix}confusion"] = confusion(preds, labels, task.num_labels)
        seconds += secs
        count += len(labels)
    record["eval_runtime"] = seconds
    record["eval_samples_per_second"] = count / seconds if seconds else None
    return record
