"""The server's round loop (spec §4.5, flgo-style): sample -> train -> aggregate -> plug in -> evaluate -> align ->
checkpoint. The clients of a round are spread over the processes (client-parallel), their updates gathered, and
every process aggregates identically; evaluation and alignment are data-parallel.

The global adapter has one owner, `Server.adapter` (global_adapter.py: FM layer names, renamed at the client
boundary only); `plug_in` puts it into the FM before evaluation and alignment, the checkpoint writes it explicitly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sub_model_construct.families import backbone, family_of
from sub_model_construct.progress import Progress
from sub_model_construct.signals import Interrupted
from sub_model_construct.train_loop import NonFiniteLossError

from .adapters import FederatedError, load_adapter
from .align import zero_activation_rates
from .aligner import Aligner
from .client import ClientTrainer, ClientUpdate, round_learning_rate
from .communication import RoundPayload, SubFMSync, ffn_changes, ffn_shapes, model_bytes, round_bytes
from .global_adapter import GlobalAdapter
from .results import RunFolder
from .sampling import multiplicities
from .settings import FedSettings
from .tasks import TaskData

logger = logging.getLogger(__name__)


@dataclass
class Federation:
    """Everything the round loop needs, built at start-up (assemble.py)."""

    settings: FedSettings
    accelerator: object
    task: TaskData
    fm: object  # PeftModel over the FM: evaluated, the alignment teacher, checkpointed
    client_model: object  # PeftModel over the sub-FM or emulator, or the same object as `fm` (FedPETuning)
    renamer: object  # adapters.LayerRenamer: client-model layer names <-> FM layer names
    clients: ClientTrainer
    schedule: list[list[int]]
    run: RunFolder
    metric: str
    aligner: Aligner | None = None  # FedPFT only
    info: dict = field(default_factory=dict)  # start-up facts repeated in summary.json
    remote: object | None = None  # clients elsewhere (flower_app.FlowerClients); None: trained in these processes
    # a resume: (server state, FM-named adapter) of the checkpoint it continues from, read once at start-up
    resume_from: tuple[dict, dict] | None = None


class Server:
    def __init__(self, fed: Federation) -> None:
        self.f = fed
        self.adapter = GlobalAdapter.of(fed.fm, fed.renamer)
        self.history: list[dict] = []
        self.timings: list[dict] = []  # timings.jsonl, one record per round (log_timings)
        self.start_round = 0
        self.resumed = False
        self.last_client_adapter: dict | None = None
        model, settings = fed.client_model, fed.settings
        family = family_of(backbone(model).config)
        layers = fed.aligner.layers if fed.aligner else []
        # the sub-FM changes each client still lacks (spec §4.10 W_fro sync), and the one-time model shipping
        element_size = next(model.parameters()).element_size()
        self.sync = SubFMSync(ffn_shapes(model, family, layers), settings.num_clients, element_size)
        self.client_model_bytes = model_bytes(model, family.head)
        self.data_split = "server_val" if settings.partition.test_holdout > 0 else "server_test"  # spec §4.12
        if fed.resume_from is not None:
            self.restore(*fed.resume_from)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        s = self.f.settings
        r = self.start_round
        try:
            if not self.resumed and s.eval_interval > 0:
                self.round_zero()
            for r in range(self.start_round + 1, s.num_rounds + 1):
                self.round(r)
                if s.stop_after_round and r == s.stop_after_round and r < s.num_rounds:
                    logger.info("stopping after round %d as asked (--stop_after_round); continue with --resume", r)
                    return self.write_summary(finished=False)
            return self.write_summary(finished=True)
        except Interrupted as stop:
            raise stop.saying(f"during round {r}; {self.last_checkpoint()}; continue with --resume True") from None

    def last_checkpoint(self) -> str:
        """Where a stopped run continues from, for its one-line message."""
        latest = self.f.run.latest_checkpoint()
        return f"last round checkpoint: {latest}" if latest else "no round checkpoint yet"

    def stop(self, what: str) -> FederatedError:
        return FederatedError(f"{what}; {self.last_checkpoint()}")

    def round(self, r: int) -> None:
        s, aligner = self.f.settings, self.f.aligner
        lr = round_learning_rate(
            s.lr_scheduler_type, s.learning_rate, r, s.num_rounds, s.lr_decay, s.lr_type2_reference
        )
        collect = aligner is not None and aligner.collects_in(r)
        t0 = time.perf_counter()
        updates = self.train_clients(r, lr, collect)
        t1 = time.perf_counter()
        self.aggregate(r, updates)
        bad = self.adapter.non_finite()
        if bad:
            raise self.stop(f"non-finite values in aggregation, round {r}: the global adapter's {bad}")
        self.plug_in()
        t2 = time.perf_counter()
        record = {"round": r, "learning_rate": lr, **self.client_record(updates, collect)}
        if self.f.remote is not None:
            record.update(self.f.remote.round_record())
        if s.evaluates_in(r):
            record.update(self.evaluate())
            self.check_finite_eval(record, r)
        t3 = time.perf_counter()
        record["aligned"] = aligner is not None and aligner.aligns_in(r)
        if record["aligned"]:
            record["align"] = self.align(r, updates, collect)
        t4 = time.perf_counter()
        record["seconds"] = {"train": t1 - t0, "aggregate": t2 - t1, "eval": t3 - t2, "align": t4 - t3}
        self.log_round(record)
        t5 = time.perf_counter()
        self.checkpoint(r)
        t6 = time.perf_counter()
        self.write_summary(finished=r == s.num_rounds)
        t7 = time.perf_counter()
        self.log_timings(r, record["seconds"], log=(t5 - t4) + (t7 - t6), checkpoint=t6 - t5, total=t7 - t0)

    def round_zero(self) -> None:
        """Round 0: the FM with the initial adapter (spec §4.11), evaluated unless --eval_round_zero False."""
        record = {"round": 0, "learning_rate": None, "aligned": False, "data_split": self.data_split}
        record.update(bytes_sent=0, bytes_received=0, bytes_sent_cumulative=0, bytes_received_cumulative=0)
        t0, s = time.perf_counter(), self.f.settings
        if s.evaluates_in(0):
            self.plug_in()
            record["fm"] = self.f.task.evaluate(self.f.fm, s.per_device_eval_batch_size, self.f.accelerator)
        t1 = time.perf_counter()
        self.log_round(record)
        t2 = time.perf_counter()
        self.checkpoint(0)
        t3 = time.perf_counter()
        self.log_timings(0, {"eval": t1 - t0}, log=t2 - t1, checkpoint=t3 - t2, total=t3 - t0)

    # ------------------------------------------------------------------ the steps of a round
    def train_clients(self, r: int, lr: float, collect: bool) -> list[ClientUpdate]:
        """The round's clients, spread over the processes, trained from the global adapter and gathered (or, with
        a remote transport, trained wherever the clients live)."""
        acc, s = self.f.accelerator, self.f.settings
        draws = multiplicities(self.f.schedule[r - 1])
        if self.f.remote is not None:
            updates = self.f.remote.train(self.payload(r, lr, [c for c, _ in draws], collect))
            return self.check_updates(r, sorted(updates, key=lambda u: u.client))
        adapter = self.adapter.for_clients()
        # a bar on a terminal only: elsewhere the round's own log line says it
        bar = Progress(len(draws), f"round {r} clients", enabled=acc.is_main_process, unit="clients", lines=0)
        updates = []
        for client, _ in draws[acc.process_index :: acc.num_processes]:
            updates.append(self.f.clients.train(client, r, lr, adapter, s.seed, collect))
            bar.update(acc.num_processes)
        bar.close()
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            updates = gather_object(updates)
        updates.sort(key=lambda u: u.client)
        return self.check_updates(r, updates)

    def payload(self, r: int, lr: float, clients: list[int], collect: bool) -> RoundPayload:
        """What a remote transport sends the round's clients: the global adapter in client-model names and the
        sub-FM FFN changes each client lacks (charged in client_record when it replies)."""
        changes = {c: self.sync.changes_for(c) for c in clients}
        sub_fm = {c: ffn_changes(self.f.client_model, ch) for c, ch in changes.items() if ch}
        return RoundPayload(r, clients, lr, collect, self.f.settings.seed, self.adapter.for_clients(), sub_fm)

    def attach(self, remote, installed: Sequence[int], clients: Sequence[int]) -> None:
        """Train through `remote` from now on; `installed`: the clients sent the client model at first contact."""
        self.f.remote = remote
        self.sync.connected(clients, installed)

    def check_updates(self, r: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        failed = [u for u in updates if u.error]
        if failed:
            raise self.stop(failed[0].error)
        return updates

    def aggregate(self, r: int, updates: list[ClientUpdate]) -> None:
        counts = dict(multiplicities(self.f.schedule[r - 1]))
        self.last_client_adapter = updates[-1].adapter
        self.adapter.aggregate(
            [(u.adapter, u.num_examples, counts[u.client]) for u in updates],
            self.f.settings.aggregate,
            self.f.clients.total_examples,
            self.f.settings.num_clients,
        )

    def plug_in(self) -> None:
        """The one plug-in point (spec §4.11): the global adapter into the FM."""
        self.adapter.plug_into(self.f.fm)

    def evaluate(self) -> dict:
        """The FM with the plugged-in adapter, and the client model with the global one unless it is the FM."""
        f, batch = self.f, self.f.settings.per_device_eval_batch_size
        record = {"fm": f.task.evaluate(f.fm, batch, f.accelerator)}
        if f.settings.eval_sub_model and f.client_model is not f.fm:
            load_adapter(f.client_model, self.adapter.for_clients())
            record["sub_fm"] = f.task.evaluate(f.client_model, batch, f.accelerator)
        return record

    def check_finite_eval(self, record: dict, r: int) -> None:
        for model in ("fm", "sub_fm"):
            bad = [k for k, v in (record.get(model) or {}).items() if k.endswith("loss") and not np.isfinite(v)]
            if bad:
                raise self.stop(f"non-finite loss ({record[model][bad[0]]}) in evaluation of the {model}, round {r}")

    def align(self, r: int, updates: list[ClientUpdate], collect: bool) -> dict:
        rates = zero_activation_rates([u.stats for u in updates]) if collect else None
        f = self.f
        try:
            result = f.aligner.run(
                f.fm, f.client_model, rates, r, f.accelerator, self.adapter.for_clients(), self.last_client_adapter
            )
        except NonFiniteLossError as exc:
            raise self.stop(str(exc)) from exc
        self.sync.record_alignment(result.pop("updated_neurons"))
        f.run.write_json(Path("align") / f"round{r}.json", result)
        return f.aligner.summary(result)

    def client_record(self, updates: list[ClientUpdate], collect: bool) -> dict:
        """Clients, their mean loss and the round's bytes (communication.round_bytes)."""
        last = self.history[-1] if self.history else {}
        return {
            "clients": [u.client for u in updates],
            "client_loss": float(np.mean([u.loss for u in updates])),
            "data_split": self.data_split,
            **round_bytes(self.adapter.nbytes(), self.sync, updates, collect, last),
        }

    # ------------------------------------------------------------------ results, checkpoints, resume
    def log_round(self, record: dict) -> None:
        self.f.run.append_metrics(record, self.history)
        fm = {k: round(v, 4) for k, v in record.get("fm", {}).items() if k.endswith(("accuracy", "f1", "loss"))}
        sub = {k: round(v, 4) for k, v in (record.get("sub_fm") or {}).items() if k.endswith("accuracy")}
        if self.f.accelerator.is_main_process:
            logger.info("Round %d FM %s sub-FM %s", record["round"], fm, sub or "-")

    def log_timings(self, r: int, seconds: dict, log: float, checkpoint: float, total: float) -> None:
        """timings.jsonl: the whole round's wall time by part. metrics.jsonl's `seconds` cannot hold the parts that
        come after its record is written (the record's own writing, the checkpoint, summary.json), so the complete
        split lives here; `log` is the writing of metrics.jsonl and summary.json, and `rest` whatever `total` holds
        besides the named parts. Only this file's own writing is left out."""
        parts = {"train": 0.0, "aggregate": 0.0, "eval": 0.0, "align": 0.0, **seconds}
        parts.update(log=log, checkpoint=checkpoint)
        self.timings.append({"round": r, **parts, "rest": total - sum(parts.values()), "total": total})
        self.f.run.write_timings(self.timings)

    def checkpoint(self, r: int) -> None:
        """The global adapter in PEFT format plus the server's state."""
        state = {"round": r, "sync": self.sync.state_dict()}
        if self.f.aligner is not None:
            state.update(self.f.aligner.state_dict(self.f.client_model))
        keep = self.f.run.best_rounds(self.history, self.f.metric)
        self.f.run.save_checkpoint(r, lambda folder: self.adapter.save(folder, self.f.fm), state, keep=keep)

    def restore(self, state: dict, adapter: dict) -> None:
        """Continue after a round checkpoint: its server state and its adapter (FM names, the one stored copy)."""
        self.start_round, self.resumed = state["round"], True
        self.adapter.restore(adapter)
        self.sync.load_state_dict(state["sync"])
        if self.f.aligner is not None:
            self.f.aligner.load_state_dict(state, self.f.client_model)
        self.history = self.f.run.truncate_metrics(self.start_round)
        self.timings = self.f.run.truncate_timings(self.start_round)
        logger.info("resumed from round %d", self.start_round)

    def write_summary(self, finished: bool) -> dict:
        last = self.history[-1] if self.history else {}
        communication = {
            "bytes_sent": last.get("bytes_sent_cumulative", 0),
            "bytes_received": last.get("bytes_received_cumulative", 0),
            "client_model_bytes": self.client_model_bytes,
            # one-time: every client receives the client model (sub-FM, emulator or FM) before its first round
            "model_shipping_bytes": self.client_model_bytes * self.f.settings.num_clients,
            "sub_fm_version": self.sync.version,
        }
        extra = {
            "method": self.f.settings.method,
            "rounds": self.f.settings.num_rounds,
            "communication": communication,
            "round_seconds": sum(sum(r.get("seconds", {}).values()) for r in self.history),
            **self.f.info,
        }
        return self.f.run.write_summary(self.history, self.f.metric, finished=finished, extra=extra)
