"""Server and clients of federated proxy fine-tuning (spec §4.4–4.8, §4.11).

One client model object per process (the sub-FM with LoRA, or the FM for FedPETuning); clients load the global
adapter, train, and hand back a copy of theirs. The clients of a round are spread over the processes
(client-parallel), their updates gathered, and every process aggregates identically; evaluation and alignment are
data-parallel. All randomness of a client's round is a function of (seed, round, client), so results do not depend
on the number of processes or on a resume.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from sub_model_construct.cli import atomic_write_json
from sub_model_construct.families import Family, backbone, family_of
from sub_model_construct.train_loop import NonFiniteLossError, OptimConfig, fetch, steps_for, to_device, train

from .align import align as neuron_alignment
from .align import counting_zero_activations, ffn_state, load_ffn_state, next_grad_accum, zero_activation_rates
from .communication import SubFMSync, ffn_shapes, model_bytes
from .tasks import compute_metrics, eval_prefix

logger = logging.getLogger(__name__)


class FederatedError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); the message says where and what was kept."""


# ----------------------------------------------------------------------------------------------- adapters
def adapter_state(model) -> dict[str, torch.Tensor]:
    """The communicated object: LoRA A/B of every target plus the head (spec §4.4), cloned to CPU (state-dict tensors
    alias live parameters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k or "modules_to_save" in k]
    if missing:
        raise FederatedError(f"adapter does not fit the model: missing {missing[:3]}")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class LayerRenamer:
    """Maps adapter keys between sub-FM layer indices and FM layer indices (identity except for FedOT, whose
    emulator drops layers: spec §4.13)."""

    def __init__(self, family: Family, layer_map: Sequence[int]) -> None:
        self.to_fm_index = {j: i for j, i in enumerate(layer_map)}
        self.to_sub_index = {i: j for j, i in enumerate(layer_map)}
        self.identity = list(layer_map) == list(range(len(layer_map)))
        self.pattern = re.compile(rf"(\.{re.escape(family.layers)}\.)(\d+)(\.)")

    def _rename(self, state: dict, mapping: dict) -> dict:
        if self.identity:
            return dict(state)
        return {
            self.pattern.sub(lambda m: f"{m[1]}{mapping[int(m[2])]}{m[3]}", k, count=1): v for k, v in state.items()
        }

    def to_fm(self, state: dict) -> dict:
        return self._rename(state, self.to_fm_index)

    def to_sub(self, state: dict) -> dict:
        return self._rename(state, self.to_sub_index)


def lora_target_regex(family: Family, layers: Sequence[int]) -> str:
    """Regex over full module names: the attention projections (q, k, v, o) of the given layers (spec §4.4; the
    reference's ViT target-name bug, spec §6.11, is not copied)."""
    idx = "|".join(str(i) for i in layers)
    mods = "|".join(re.escape(m) for m in family.attention)
    return rf".*\.{re.escape(family.layers)}\.({idx})\.({mods})$"


def check_adapters_match(sub_state: dict, fm_state: dict) -> None:
    """Plug-in needs identical keys and shapes (spec §2.7, §4.11); checked once at start-up."""
    if set(sub_state) != set(fm_state):
        only_sub = sorted(set(sub_state) - set(fm_state))[:3]
        only_fm = sorted(set(fm_state) - set(sub_state))[:3]
        raise FederatedError(f"sub-FM and FM adapters differ: only in sub-FM {only_sub}, only in FM {only_fm}")
    for k, v in sub_state.items():
        if v.shape != fm_state[k].shape:
            raise FederatedError(
                f"adapter tensor {k}: sub-FM shape {tuple(v.shape)} != FM shape {tuple(fm_state[k].shape)}"
            )


# ----------------------------------------------------------------------------------------------- FL arithmetic
def aggregate(
    updates: Sequence[tuple[dict, int, int]], mode: str, global_state: dict, total_examples: int, num_clients: int
) -> dict[str, torch.Tensor]:
    """FedAvg over (adapter, num_examples, multiplicity) triples, weights paired with their own update (spec §4.7,
    fixing §6.8). Modes: weighted (paper: n_k / sum of the selected n), uniform (reference default: plain mean over
    draws), weighted_scale (sum p_k W_k * N/K with p_k = n_k/n), weighted_com ((1 - sum p_k) W + sum p_k W_k)."""
    draws = sum(m for _, _, m in updates)
    if mode == "uniform":
        weights = [m / draws for _, _, m in updates]
    elif mode == "weighted":
        selected = sum(n * m for _, n, m in updates)
        weights = [n * m / selected for _, n, m in updates]
    elif mode in ("weighted_scale", "weighted_com"):
        weights = [n * m / total_examples for _, n, m in updates]
    else:
        raise ValueError(f"unknown aggregation {mode!r}")
    out = {}
    for key in updates[0][0]:
        acc = sum(w * u[key].double() for w, (u, _, _) in zip(weights, updates))
        if mode == "weighted_scale":
            acc = acc * num_clients / draws
        elif mode == "weighted_com":
            acc = acc + (1 - sum(weights)) * global_state[key].double()
        out[key] = acc.to(updates[0][0][key].dtype)
    return out


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


def sample_schedule(
    num_clients: int, proportion: float, rounds: int, mode: str, sizes: Sequence[int], seed: int
) -> list[list[int]]:
    """Clients drawn for rounds 1..R (spec §4.5), from one seeded stream, so pre-sampling or not gives the same
    draws and a resumed run sees the same schedule. uniform: K without replacement; full: everyone; md: K with
    replacement, probability proportional to data size (duplicates kept: they weigh the aggregation)."""
    k = max(int(num_clients * proportion), 1)
    rng = np.random.RandomState(seed)
    schedule = []
    for _ in range(rounds):
        if mode == "full":
            schedule.append(list(range(num_clients)))
        elif mode == "uniform":
            schedule.append(sorted(rng.choice(num_clients, k, replace=False).tolist()))
        elif mode == "md":
            p = np.asarray(sizes, dtype=float) / sum(sizes)
            schedule.append(sorted(rng.choice(num_clients, k, replace=True, p=p).tolist()))
        else:
            raise ValueError(f"unknown sampling {mode!r}")
    return schedule


def client_seed(seed: int, round_index: int, client: int) -> int:
    return (seed * 1_000_003 + round_index * 10_007 + client) % (2**31 - 1)


# ----------------------------------------------------------------------------------------------- clients
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
    count_layers: list[int] = field(default_factory=list)

    def train(
        self, client: int, round_index: int, lr: float, global_state: dict, seed: int, collect: bool
    ) -> ClientUpdate:
        started = time.perf_counter()
        data = self.datasets[client]
        load_adapter(self.model, global_state)
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
            with counting_zero_activations(self.model, self.count_layers, collect) as stats:
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
                )
        except NonFiniteLossError as exc:
            return ClientUpdate(client, None, len(data), float("nan"), time.perf_counter() - started, error=str(exc))
        return ClientUpdate(
            client,
            adapter_state(self.model),
            len(data),
            result["loss"],
            time.perf_counter() - started,
            stats=dict(stats) if collect else None,
        )


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model, dataset, collate, batch_size: int, device, accelerator
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(predictions, labels, mean loss, seconds) of `model` on `dataset`; batches are spread over processes and
    gathered back in order."""
    from accelerate.utils import gather_object

    started = time.perf_counter()
    was_training = model.training
    model.eval()
    starts = list(range(0, len(dataset), batch_size))
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = []
    for b in starts[rank::world]:
        batch = to_device(collate(fetch(dataset, range(b, min(b + batch_size, len(dataset))))), device)
        out = model(**batch)
        mine.append(
            (
                b,
                out.logits.argmax(-1).cpu().numpy(),
                batch["labels"].cpu().numpy(),
                out.loss.item() * len(batch["labels"]),
            )
        )
    everything = gather_object(mine) if world > 1 else mine
    everything.sort(key=lambda item: item[0])
    model.train(was_training)
    preds = np.concatenate([p for _, p, _, _ in everything]) if everything else np.array([])
    labels = np.concatenate([y for _, _, y, _ in everything]) if everything else np.array([])
    loss = sum(s for *_, s in everything) / max(len(labels), 1)
    return preds, labels, loss, time.perf_counter() - started


def gather_updates(updates: list[ClientUpdate], accelerator) -> list[ClientUpdate]:
    if accelerator.num_processes == 1:
        return updates
    from accelerate.utils import gather_object

    return gather_object(updates)


def multiplicities(selected: Sequence[int]) -> list[tuple[int, int]]:
    """(client, times drawn) in ascending client order."""
    return sorted(Counter(selected).items())


def client_progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# ----------------------------------------------------------------------------------------------- server
@dataclass
class ServerSetup:
    """Everything the round loop needs, built by the entry point."""

    args: object
    accelerator: object
    task: object  # tasks.TaskData
    fm: object  # PeftModel over the FM (evaluation, alignment teacher)
    client_model: object  # PeftModel over the sub-FM (pft/fedot) or the FM itself (peft)
    renamer: LayerRenamer
    clients: ClientTrainer
    schedule: list[list[int]]
    run: object  # results.RunFolder
    metric: str
    kd_pairs: list[tuple[int, int]]  # (FM layer, sub-FM layer) aligned by neuron-level distillation
    public_data: object = None
    public_collate: object = None
    align_config: object = None
    fm_metric_names: tuple = ("accuracy",)


class Server:
    """The round loop of spec §4.5: sample -> local training -> aggregate -> evaluate the FM with the plugged-in
    adapter (and the sub-FM) -> every t rounds neuron-level alignment -> checkpoint."""

    def __init__(self, setup: ServerSetup) -> None:
        self.s = setup
        a = setup.args
        self.aligning = a.method == "pft" and 0 < a.align_interval < a.num_rounds
        self.sub_layers = [s for _, s in setup.kd_pairs]
        self.global_state = setup.renamer.to_sub(adapter_state(setup.fm))
        self.grad_accum = a.align_grad_accum_start
        self.history: list[dict] = []
        self.start_round = 0
        self.resumed = False
        self.last_client_adapter: dict | None = None
        family = family_of(backbone(setup.client_model).config)
        element = next(setup.client_model.parameters()).element_size()
        # sub-FM changes each client still lacks (spec §4.10 W_fro sync), and the one-time shipping of the client model
        self.sync = SubFMSync(ffn_shapes(setup.client_model, family, self.sub_layers), a.num_clients, element)
        self.client_model_bytes = model_bytes(setup.client_model, family.head)
        self.data_split = "server_val" if a.test_holdout > 0 else "server_test"  # spec §4.12

    # ------------------------------------------------------------------ state
    def server_state(self, round_index: int) -> dict:
        state = {
            "round": round_index,
            "global": self.global_state,
            "grad_accum": self.grad_accum,
            "sync": self.sync.state_dict(),
        }
        if self.aligning:
            state["sub_fm_ffn"] = ffn_state(self.s.client_model, self.sub_layers)
        return state

    def restore(self, checkpoint) -> None:
        state = torch.load(checkpoint / "server_state.pt", weights_only=False)
        self.start_round = state["round"]
        self.resumed = True
        self.global_state = state["global"]
        self.grad_accum = state["grad_accum"]
        self.sync.load_state_dict(state["sync"])
        if "sub_fm_ffn" in state:
            load_ffn_state(self.s.client_model, self.sub_layers, state["sub_fm_ffn"])
        self.history = self.s.run.truncate_metrics(self.start_round)
        logger.info("resumed from %s (round %d)", checkpoint, self.start_round)

    # ------------------------------------------------------------------ pieces of a round
    def evaluate_model(self, model, state_for_model: dict) -> dict:
        a, acc = self.s.args, self.s.accelerator
        load_adapter(model, state_for_model)
        record, seconds, count = {}, 0.0, 0
        for key, dataset in self.s.task.eval_splits.items():
            preds, labels, loss, secs = evaluate(
                model, dataset, self.s.task.collate_fn, a.per_device_eval_batch_size, acc.device, acc
            )
            prefix = eval_prefix(key)
            for name, value in compute_metrics(preds, labels, self.s.task.metric_names).items():
                record[f"{prefix}{name}"] = value
            record[f"{prefix}loss"] = loss
            seconds += secs
            count += len(labels)
        record["eval_runtime"] = seconds
        record["eval_samples_per_second"] = count / seconds if seconds else None
        return record

    def train_clients(self, round_index: int, lr: float, collect: bool) -> list[ClientUpdate]:
        acc = self.s.accelerator
        draws = multiplicities(self.s.schedule[round_index - 1])
        mine = draws[acc.process_index :: acc.num_processes]
        bar = client_progress(len(draws), f"round {round_index} clients", acc.is_main_process)
        updates = []
        for client, _ in mine:
            updates.append(self.s.clients.train(client, round_index, lr, self.global_state, self.s.args.seed, collect))
            bar.update(acc.num_processes)
        bar.close()
        gathered = gather_updates(updates, acc)
        gathered.sort(key=lambda u: u.client)
        failed = [u for u in gathered if u.error]
        if failed:
            raise FederatedError(
                f"round {round_index}, client {failed[0].client}: {failed[0].error}; "
                f"last good checkpoint: {self.s.run.latest_checkpoint() or 'none (round 0)'}"
            )
        return gathered

    def align(self, round_index: int, rates) -> dict:
        a = self.s.args
        self.grad_accum = next_grad_accum(self.grad_accum, a.align_grad_accum_min, a.align_epochs)
        fm_state = self.s.renamer.to_fm(self.global_state)
        if a.align_adapter == "global":  # spec §6.5: the paper-intended state
            load_adapter(self.s.fm, fm_state)
            load_adapter(self.s.client_model, self.global_state)
        else:  # reference: student keeps the last client's adapter (the teacher keeps the last evaluated one)
            load_adapter(self.s.client_model, self.last_client_adapter)
        return neuron_alignment(
            self.s.fm,
            self.s.client_model,
            self.s.kd_pairs,
            rates,
            self.s.public_data,
            self.s.public_collate,
            self.s.align_config,
            self.grad_accum,
            seed=a.seed + round_index,
            accelerator=self.s.accelerator,
        )

    def round_bytes(self, updates: list[ClientUpdate], collect: bool) -> dict:
        """Bytes of this round (spec §4.4, §4.9-4.10): down, the global adapter plus the sub-FM changes each
        selected client lacks; up, the clients' adapters plus their zero-activation counts in alignment rounds."""
        adapter_bytes = state_bytes(self.global_state)
        sent = sum(adapter_bytes + self.sync.send(u.client) for u in updates)
        received = sum(state_bytes(u.adapter) for u in updates)
        if collect:
            received += sum(sum(t.numel() * 8 for t in u.stats["zero_counts"].values()) for u in updates)
        last = self.history[-1] if self.history else {}
        return {
            "bytes_sent": sent,
            "bytes_received": received,
            "bytes_sent_cumulative": last.get("bytes_sent_cumulative", 0) + sent,
            "bytes_received_cumulative": last.get("bytes_received_cumulative", 0) + received,
        }

    # ------------------------------------------------------------------ the loop
    def log_round(self, record: dict) -> None:
        self.s.run.append_metrics(record, self.history)
        if self.s.accelerator.is_main_process:
            fm = record.get("fm", {})
            shown = {k: round(v, 4) for k, v in fm.items() if k.endswith(("accuracy", "f1", "loss"))}
            sub = {k: round(v, 4) for k, v in (record.get("sub_fm") or {}).items() if k.endswith("accuracy")}
            logger.info("Round %d FM %s sub-FM %s", record["round"], shown, sub or "-")

    def run(self) -> dict:
        a, acc = self.s.args, self.s.accelerator
        evaluate_sub = a.eval_sub_model and a.method != "peft"
        if not self.resumed and a.eval_interval > 0:  # round 0: the FM with the initial adapter
            record = {
                "round": 0,
                "learning_rate": None,
                "aligned": False,
                "data_split": self.data_split,
                "bytes_sent": 0,
                "bytes_received": 0,
                "bytes_sent_cumulative": 0,
                "bytes_received_cumulative": 0,
            }
            record["fm"] = self.evaluate_model(self.s.fm, self.s.renamer.to_fm(self.global_state))
            self.log_round(record)
            self.s.run.save_checkpoint(0, self.s.fm, self.server_state(0), keep=self.keep_set())
        for r in range(self.start_round + 1, a.num_rounds + 1):
            lr = round_learning_rate(
                a.lr_scheduler_type, a.learning_rate, r, a.num_rounds, a.lr_decay, a.lr_type2_reference
            )
            collect = self.aligning and r % a.align_interval == 0 and a.align_retained_ratio > 0
            t0 = time.perf_counter()
            updates = self.train_clients(r, lr, collect)
            t1 = time.perf_counter()
            counts = dict(multiplicities(self.s.schedule[r - 1]))
            self.last_client_adapter = updates[-1].adapter
            self.global_state = aggregate(
                [(u.adapter, u.num_examples, counts[u.client]) for u in updates],
                a.aggregate,
                self.global_state,
                sum(len(d) for d in self.s.clients.datasets),
                a.num_clients,
            )
            rates = zero_activation_rates([u.stats for u in updates]) if collect else None
            t2 = time.perf_counter()
            record = {
                "round": r,
                "learning_rate": lr,
                "clients": [u.client for u in updates],
                "client_loss": float(np.mean([u.loss for u in updates])),
                "data_split": self.data_split,
                **self.round_bytes(updates, collect),
            }
            evaluated = a.eval_interval > 0 and (r % a.eval_interval == 0 or r == a.num_rounds)
            if evaluated:
                record["fm"] = self.evaluate_model(self.s.fm, self.s.renamer.to_fm(self.global_state))
                if evaluate_sub:
                    record["sub_fm"] = self.evaluate_model(self.s.client_model, self.global_state)
            t3 = time.perf_counter()
            record["aligned"] = self.aligning and r % a.align_interval == 0
            if record["aligned"]:
                result = self.align(r, rates)
                record["align"] = {
                    k: result[k]
                    for k in (
                        "steps",
                        "effective_batch_size",
                        "loss",
                        "last_loss",
                        "grad_accum_steps",
                        "changed_parameters",
                    )
                }
                self.sync.record_alignment(result.pop("updated_neurons"))
                if acc.is_main_process:
                    atomic_write_json(self.s.run.path / "align" / f"round{r}.json", result)
            t4 = time.perf_counter()
            record["seconds"] = {"train": t1 - t0, "aggregate": t2 - t1, "eval": t3 - t2, "align": t4 - t3}
            # the checkpoint saves the FM's adapter (PEFT format): it must be this round's global one, which the
            # evaluation (and a global-adapter alignment) already loaded
            if not evaluated:
                load_adapter(self.s.fm, self.s.renamer.to_fm(self.global_state))
            self.log_round(record)
            self.s.run.save_checkpoint(r, self.s.fm, self.server_state(r), keep=self.keep_set())
            self.s.run.write_summary(
                self.history, self.s.metric, finished=r == a.num_rounds, extra=self.summary_extra()
            )
            if a.stop_after_round and r == a.stop_after_round and r < a.num_rounds:
                logger.info("stopping after round %d as asked (--stop_after_round); continue with --resume", r)
                return self.s.run.write_summary(self.history, self.s.metric, finished=False, extra=self.summary_extra())
        return self.s.run.write_summary(self.history, self.s.metric, finished=True, extra=self.summary_extra())

    def keep_set(self) -> set[int]:
        key = f"eval_{self.s.metric}"
        scored = [(r["fm"][key], -r["round"], r["round"]) for r in self.history if key in r.get("fm", {})]
        return {max(scored)[2]} if scored else set()

    def summary_extra(self) -> dict:
        last = self.history[-1] if self.history else {}
        communication = {
            "bytes_sent": last.get("bytes_sent_cumulative", 0),
            "bytes_received": last.get("bytes_received_cumulative", 0),
            "client_model_bytes": self.client_model_bytes,
            # one-time: every client receives the client model (sub-FM, emulator or FM) before its first round
            "model_shipping_bytes": self.client_model_bytes * self.s.args.num_clients,
            "sub_fm_version": self.sync.version,
        }
        wall = sum(sum(r.get("seconds", {}).values()) for r in self.history)
        return {
            "method": self.s.args.method,
            "rounds": self.s.args.num_rounds,
            "communication": communication,
            "round_seconds": wall,
            **getattr(self, "info", {}),
        }
