"""FedPFT, FedPETuning and FedOT as a Flower app (ServerApp + ClientApp), over the project's own roles.

The ServerApp is `fedtune.py`'s server: `assemble.build_server` builds the same `Server` (FM, client model, aligner,
sampling schedule, run folder, checkpoints, `--resume`), and `FlowerClients` replaces only the step "train the
round's clients": each selected client is sent a message, trains on its SuperNode, and replies. Aggregation,
alignment, plug-in, evaluation and results are the same code as the simulation's.

What travels (spec §4.4, §4.9-4.10):
- first contact (`query`, action "hello"): the node says which client (partition) it holds and whether it has the
  client model; a node without it is sent the client model once (action "install": its config and the weights
  except LoRA and head, which travel as the adapter), unless its node configuration names a local copy
  (`client-model=<folder>`);
- each round (`train`): the global adapter, the sub-FM FFN changes the client has not received yet (the union of
  neurons updated by the alignments since its version, `communication.SubFMSync`), the round's learning rate and
  whether to count zero activations; the reply carries the client's adapter, its example count and loss, and in
  alignment rounds its zero-activation counts.

The run configuration (`[tool.flwr.app.config]` or `flwr run --run-config`) carries the fedtune command line as one
string, `fedtune-args`, plus `modality` ("text" or "image"), `round-timeout` (seconds a round waits for replies;
a client that has not replied by then is recorded as dropped and the round goes on with the replies it has) and
`connect-timeout` (seconds to wait for every client's SuperNode). A SuperNode's node configuration carries
`partition-id` (the client it holds) and optionally `client-model`.

The ClientApp is flower_client.py, the wire format flower_wire.py. Flower is an optional dependency (`pip install -e
.[flower]`); nothing else in the project imports these modules.
"""

from __future__ import annotations

import logging
import time

from .client import ClientUpdate
from .communication import RoundPayload
from .flower_wire import (
    HELLO,
    ConfigRecord,
    Context,
    Message,
    RecordDict,
    client_model_payload,
    record_of,
    run_settings,
    state_of,
    wire_bytes,
)

try:
    from flwr.serverapp import Grid, ServerApp
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Flower is not installed: pip install -e '.[flower]' (flwr 1.42.0)") from exc

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- server side
class FlowerClients:
    """The `Server`'s remote transport: the round's clients are trained on the SuperNodes that hold them. It is
    handed a round's payload and returns the clients' updates; it holds no reference to the server."""

    def __init__(self, grid: Grid, round_timeout: float | None, connect_timeout: float) -> None:
        self.grid = grid
        self.round_timeout, self.connect_timeout = round_timeout, connect_timeout
        self.node_of: dict[int, int] = {}  # client (partition id) -> Flower node id
        self.last: dict = {}

    # -------------------------------------------------------------- first contact
    def connect(self, num_clients: int, client_model) -> dict:
        """Find the node of every client, and send `client_model` to nodes that lack it. Returns the shipping
        record: the clients sent the model, and the bytes that went on the wire."""
        deadline = time.monotonic() + self.connect_timeout
        holds_model: dict[int, bool] = {}
        asked: set[int] = set()
        while len(self.node_of) < num_clients:
            if time.monotonic() > deadline:
                missing = sorted(set(range(num_clients)) - set(self.node_of))
                raise TimeoutError(
                    f"{len(self.node_of)} of {num_clients} clients connected after {self.connect_timeout:.0f} s; "
                    f"no SuperNode holds partition-id {missing[:10]}"
                )
            new = [n for n in self.grid.get_node_ids() if n not in asked]
            if not new:
                time.sleep(1.0)
                continue
            asked.update(new)
            hello = [self._message(RecordDict({"config": ConfigRecord({"action": HELLO})}), n, "query", "0")
                     for n in new]  # fmt: skip
            answered = set()
            for reply in self.grid.send_and_receive(hello, timeout=self.connect_timeout):
                if reply.has_error():  # e.g. a SuperNode too slow to report its heartbeat: asked again
                    logger.warning(
                        "no first contact with node %s yet: %s", reply.metadata.src_node_id, reply.error.reason
                    )
                    continue
                node, config = reply.metadata.src_node_id, reply.content["config"]
                client = int(config["partition-id"])
                if not 0 <= client < num_clients:
                    raise ValueError(f"a SuperNode holds partition-id {client}; this run has {num_clients} clients")
                if client in self.node_of and self.node_of[client] != node:
                    logger.warning("partition-id %d answered by node %s, earlier by %s: using %s (a SuperNode "
                                   "that registered again)", client, node, self.node_of[client], node)  # fmt: skip
                self.node_of[client] = node
                holds_model[client] = bool(config["has-model"])
                answered.add(node)
            if set(new) - answered:
                asked -= set(new) - answered
                time.sleep(2.0)
        need = [c for c in sorted(self.node_of) if not holds_model[c]]
        return {"clients_installed": need, "install_bytes_on_wire": self.install(need, client_model)}

    def install(self, need: list[int], client_model) -> int:
        """Send the client model to the clients in `need` (three tries); returns the bytes that went on the wire."""
        on_wire = 0
        pending, payload = list(need), client_model_payload(client_model) if need else None
        for attempt in range(3):  # every shipment counts on the wire, a repeated one too
            if not pending:
                break
            messages = [self._message(payload, self.node_of[c], "query", "0") for c in pending]
            on_wire += sum(wire_bytes(m) for m in messages)
            client_of = {self.node_of[c]: c for c in pending}
            errors = {}
            for reply in self.grid.send_and_receive(messages, timeout=self.connect_timeout):
                client = client_of.get(reply.metadata.src_node_id)
                if reply.has_error():
                    errors[client] = reply.error.reason
                elif client is not None:
                    pending.remove(client)
            if pending:
                logger.warning(
                    "client model not installed on clients %s (%s); attempt %d of 3", pending, errors, attempt + 1
                )
        if pending:
            raise RuntimeError(f"the client model could not be installed on clients {pending}")
        return on_wire

    def _message(self, content: RecordDict, node: int, kind: str, group: str) -> Message:
        return Message(content, node, kind, group_id=group)

    # -------------------------------------------------------------- a round
    def train(self, payload: RoundPayload) -> list[ClientUpdate]:
        """Send each of the round's clients its part of `payload`; the updates of those that replied in time."""
        r, clients = payload.round, payload.clients
        messages, client_of = [], {}
        for client in clients:
            config = {"round": r, "client": client, "learning-rate": payload.learning_rate}
            config.update({"collect": payload.collect, "seed": payload.seed})
            content = RecordDict({"config": ConfigRecord(config), "adapter": record_of(payload.adapter)})
            if client in payload.sub_fm:
                content["sub_fm"] = record_of(payload.sub_fm[client])
            messages.append(self._message(content, self.node_of[client], "train", str(r)))
        sent = sum(wire_bytes(m) for m in messages)
        for message, client in zip(messages, clients):
            client_of[message.metadata.dst_node_id] = client
        replies = list(self.grid.send_and_receive(messages, timeout=self.round_timeout))
        updates, received, errors = [], 0, {}
        for reply in replies:
            client = client_of.get(reply.metadata.src_node_id)
            if client is None:
                continue
            if reply.has_error():
                errors[client] = reply.error.reason
                continue
            received += wire_bytes(reply)
            updates.append(self._update(client, reply.content))
        dropped = sorted(set(clients) - {u.client for u in updates})
        if not updates:
            raise RuntimeError(f"round {r}: no client replied ({errors or 'timeout'})")
        if dropped:
            logger.warning("round %d: no reply from clients %s %s", r, dropped, errors or "(timeout)")
        self.last = {"wire_bytes_sent": sent, "wire_bytes_received": received, "dropped_clients": dropped}
        if errors:
            self.last["client_errors"] = {str(k): v for k, v in errors.items()}
        return updates

    @staticmethod
    def _update(client: int, content: RecordDict) -> ClientUpdate:
        metrics = content["metrics"]
        if "error" in content:
            return ClientUpdate(client, None, int(metrics["num-examples"]), float("nan"), 0.0,
                                error=str(content["error"]["text"]))  # fmt: skip
        stats = None
        if "zero_counts" in content:
            zeros = state_of(content["zero_counts"])
            positions = content["positions"]
            stats = {
                "zero_counts": {int(k): v for k, v in zeros.items()},
                "positions": {int(k): int(v) for k, v in positions.items()},
            }
        return ClientUpdate(
            client,
            state_of(content["adapter"]),
            int(metrics["num-examples"]),
            float(metrics["loss"]),
            float(metrics["seconds"]),
            stats=stats,
        )

    def round_record(self) -> dict:
        return dict(self.last)


def server_main(grid: Grid, context: Context) -> None:
    from .startup import start

    settings, modality, round_timeout, connect_timeout = run_settings(context)
    server, accelerator, settings = start(settings, modality)
    if server is None:  # --resume auto on a finished run
        return
    remote = FlowerClients(grid, round_timeout, connect_timeout)
    shipped = remote.connect(settings.num_clients, server.f.client_model)
    server.f.info["flower"] = {"transport": "flower", **shipped}
    server.attach(remote, shipped["clients_installed"], sorted(remote.node_of))
    try:
        summary = server.run()
    finally:
        server.f.run.lock.release()
    if "final" in summary:
        key = summary["metric"]
        logger.info(
            "%s: final %s %.4f (round %d); results in %s",
            settings.method, key, summary["final"][key], summary["final_round"], server.f.run.path,
        )  # fmt: skip


server_app = ServerApp()
server_app.main()(server_main)
