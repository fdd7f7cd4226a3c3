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

Flower is an optional dependency (`pip install -e .[flower]`); nothing else in the project imports this module.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Sequence

import torch

from sub_model_construct.families import backbone, encoder_layers, family_of

from .client import ClientUpdate

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Flower is not installed: pip install -e '.[flower]' (flwr 1.42.0)") from exc

logger = logging.getLogger(__name__)
HELLO, INSTALL = "hello", "install"


# ----------------------------------------------------------------------------------------------- settings
def run_settings(context: Context):
    """(FedSettings, Modality, round timeout, connect timeout) from the run configuration."""
    from .fedtune import check_flags
    from .modality import MODALITIES

    config = context.run_config
    modality = str(config.get("modality", "text"))
    if modality not in MODALITIES:
        raise ValueError(f"run config modality={modality!r}: choose from {sorted(MODALITIES)}")
    settings = check_flags(shlex.split(str(config.get("fedtune-args", ""))), modality)
    round_timeout = float(config.get("round-timeout", 0)) or None
    return settings, MODALITIES[modality], round_timeout, float(config.get("connect-timeout", 600))


def wire_bytes(message: Message) -> int:
    """Serialised size of a message: every object of its tree as Flower deflates it for the wire."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


# ----------------------------------------------------------------------------------------------- payloads
def client_model_payload(client_model) -> RecordDict:
    """The client model as a client must first receive it: config and weights except LoRA and head."""
    base = client_model.get_base_model() if hasattr(client_model, "get_base_model") else client_model
    state = {}
    for name, tensor in backbone(base).state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().cpu().contiguous()
    config = ConfigRecord({"action": INSTALL, "config": json.dumps(base.config.to_dict())})
    return RecordDict({"config": config, "client_model": _record(state)})


def _wire_names(ffn) -> dict[str, str]:
    """Short payload names of an FFN's modules: `in` (`in0`, `in1`, ... for several inputs), `out`, `norm`."""
    names = {name: "in" if len(ffn.inputs) == 1 else f"in{k}" for k, name in enumerate(ffn.inputs)}
    return names | {ffn.output: "out"} | ({ffn.norm: "norm"} if ffn.norm else {})


def _wire_key(layer: int, tensor: str, names: dict[str, str]) -> str:
    module, _, param = tensor.rpartition(".")
    return f"{layer}.{names[module]}.{param}"


def ffn_changes(client_model, changes: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values of the sub-FM parameters listed in `changes` ({layer: neurons}): the neurons' slices of the FFN's
    input and output matrices, plus each touched layer's shared output bias and post-FFN norm (ffn.FFN)."""
    family = family_of(backbone(client_model).config)
    blocks, names = encoder_layers(client_model, family), _wire_names(family.ffn)
    out = {}
    for layer, neurons in changes.items():
        out[f"{layer}.neurons"] = neurons.to(torch.int64)
        for tensor, value in family.ffn.neuron_state(blocks[layer], neurons).items():
            out[_wire_key(layer, tensor, names)] = value
    return out


@torch.no_grad()
def apply_ffn_changes(client_model, state: dict[str, torch.Tensor]) -> None:
    family = family_of(backbone(client_model).config)
    blocks, names = encoder_layers(client_model, family), _wire_names(family.ffn)
    layers = sorted({int(k.split(".", 1)[0]) for k in state})
    for layer in layers:
        neurons = state[f"{layer}.neurons"].long()
        tensors = [s.name for s in family.ffn.neuron_slices(blocks[layer])]
        tensors += [name for name, _ in family.ffn.shared(blocks[layer])]
        values = {tensor: state[_wire_key(layer, tensor, names)] for tensor in tensors}
        family.ffn.load_neuron_state(blocks[layer], neurons, values)


def _state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def _record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


# ----------------------------------------------------------------------------------------------- server side
class FlowerClients:
    """The `Server`'s remote transport: the round's clients are trained on the SuperNodes that hold them."""

    def __init__(self, grid: Grid, server, round_timeout: float | None, connect_timeout: float) -> None:
        self.grid, self.server = grid, server
        self.round_timeout, self.connect_timeout = round_timeout, connect_timeout
        self.node_of: dict[int, int] = {}  # client (partition id) -> Flower node id
        self.last: dict = {}

    # -------------------------------------------------------------- first contact
    def connect(self) -> dict:
        """Find the node of every client, and send the client model to nodes that lack it. Returns the shipping
        record (bytes computed and on the wire)."""
        num_clients = self.server.f.settings.num_clients
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
        shipped = {"clients_installed": need, "install_bytes_on_wire": 0}
        pending, payload = list(need), client_model_payload(self.server.f.client_model) if need else None
        for attempt in range(3):  # every shipment counts on the wire, a repeated one too
            if not pending:
                break
            messages = [self._message(payload, self.node_of[c], "query", "0") for c in pending]
            shipped["install_bytes_on_wire"] += sum(wire_bytes(m) for m in messages)
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
        # a client given the model now holds the current sub-FM (after a resume: the restored one); a client with a
        # local copy holds the sub-FM as built (version 0) and is sent every alignment's changes when selected
        sync = self.server.sync
        for client in self.node_of:
            sync.client_version[client] = sync.version if client in need else 0
        return shipped

    def _message(self, content: RecordDict, node: int, kind: str, group: str) -> Message:
        return Message(content, node, kind, group_id=group)

    # -------------------------------------------------------------- a round
    def train(self, r: int, lr: float, clients: Sequence[int], server, collect: bool) -> list[ClientUpdate]:
        f = server.f
        messages, client_of = [], {}
        for client in clients:
            content = RecordDict(
                {
                    "config": ConfigRecord(
                        {"round": r, "client": client, "learning-rate": lr, "collect": collect, "seed": f.settings.seed}
                    ),
                    "adapter": _record(server.global_state),
                }
            )
            changes = server.sync.changes_for(client)
            if changes:
                content["sub_fm"] = _record(ffn_changes(f.client_model, changes))
            message = self._message(content, self.node_of[client], "train", str(r))
            messages.append(message)
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
            zeros = _state(content["zero_counts"])
            positions = content["positions"]
            stats = {
                "zero_counts": {int(k): v for k, v in zeros.items()},
                "positions": {int(k): int(v) for k, v in positions.items()},
            }
        return ClientUpdate(
            client,
            _state(content["adapter"]),
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
    remote = FlowerClients(grid, server, round_timeout, connect_timeout)
    shipped = remote.connect()
    server.f.info["flower"] = {"transport": "flower", **shipped}
    server.f.remote = remote
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


# ----------------------------------------------------------------------------------------------- client side
class ClientState:
    """What a ClientApp process rebuilds from its node and run configuration and the node's stored state: the
    settings, its partition of the task, and the client model (shipped once, or a local copy) with the sub-FM
    FFN changes received so far."""

    def __init__(self, context: Context) -> None:
        from accelerate import Accelerator

        self.context = context
        self.settings, self.modality, _, _ = run_settings(context)
        self.client = int(context.node_config["partition-id"])
        self.accelerator = Accelerator(cpu=self.settings.cpu or not torch.cuda.is_available())

    def has_model(self) -> bool:
        return "client-model" in self.context.node_config or "client_model" in self.context.state

    def trainer(self):
        from transformers import AutoConfig

        from sub_model_construct.sub_model import compressed_layers

        from .align import ffn_state, load_ffn_state
        from .assemble import client_partition, client_trainer, load_data

        s = self.settings
        fm_config = AutoConfig.from_pretrained(s.model_checkpoint)
        task, _ = load_data(s, self.modality, self.accelerator, fm_config)
        partition = client_partition(s, task, self.accelerator)
        model = self.client_model(task)
        layers = compressed_layers(backbone(model).config) if s.aligning else []
        if layers and "ffn" in self.context.state:
            load_ffn_state(model, layers, _state(self.context.state["ffn"]))
        self.save_ffn = lambda: self.context.state.__setitem__("ffn", _record(ffn_state(model, layers)))
        trainer = client_trainer(s, task, partition, model, layers, self.accelerator)
        trainer.datasets = {self.client: trainer.datasets[self.client]}  # only its own partition is kept
        return trainer, layers

    def client_model(self, task):
        from transformers import AutoConfig

        from sub_model_construct.sub_model import (
            is_sub_model_config,
            load_backbone_state,
            load_sub_model,
            sub_model_from_config,
        )

        from .assemble import client_with_lora

        head = self.modality.head_class()
        labels = {"num_labels": task.num_labels, "id2label": task.id2label, "label2id": task.label2id}
        local = self.context.node_config.get("client-model")
        if local:
            config = AutoConfig.from_pretrained(str(local))
            if is_sub_model_config(config):
                model = load_sub_model(str(local), head, **labels)
            else:
                model = head.from_pretrained(str(local), **labels)
        else:
            stored = self.context.state
            values = json.loads(str(stored["client_config"]["config"]))
            config = AutoConfig.for_model(values.pop("model_type"), **values)
            model = sub_model_from_config(config, head) if is_sub_model_config(config) else head.from_config(config)
            load_backbone_state(backbone(model), _state(stored["client_model"]), source="the shipped client model")
        return client_with_lora(self.settings, model).to(self.accelerator.device)


def client_query(message: Message, context: Context) -> Message:
    action = str(message.content["config"]["action"])
    state = ClientState(context)
    if action == HELLO:
        reply = ConfigRecord({"partition-id": state.client, "has-model": state.has_model()})
        return Message(RecordDict({"config": reply}), reply_to=message)
    if action == INSTALL:
        context.state["client_model"] = message.content["client_model"]
        context.state["client_config"] = message.content["config"]
        return Message(RecordDict({"config": ConfigRecord({"installed": True})}), reply_to=message)
    raise ValueError(f"unknown query action {action!r}")


def client_train(message: Message, context: Context) -> Message:
    state = ClientState(context)
    config = message.content["config"]
    client = int(config["client"])
    if client != state.client:
        raise ValueError(f"this node holds partition-id {state.client}, asked to train client {client}")
    trainer, _ = state.trainer()
    if "sub_fm" in message.content:
        apply_ffn_changes(trainer.model, _state(message.content["sub_fm"]))
        state.save_ffn()
    update = trainer.train(
        client,
        int(config["round"]),
        float(config["learning-rate"]),
        _state(message.content["adapter"]),
        int(config["seed"]),
        bool(config["collect"]),
    )
    metrics = MetricRecord({"num-examples": update.num_examples, "loss": float(update.loss), "seconds": update.seconds})
    content = RecordDict({"metrics": metrics})
    if update.error:
        content["error"] = ConfigRecord({"text": update.error})
        return Message(content, reply_to=message)
    content["adapter"] = _record(update.adapter)
    if update.stats is not None:
        content["zero_counts"] = _record({str(k): v for k, v in update.stats["zero_counts"].items()})
        content["positions"] = MetricRecord({str(k): int(v) for k, v in update.stats["positions"].items()})
    return Message(content, reply_to=message)


server_app = ServerApp()
server_app.main()(server_main)
client_app = ClientApp()
client_app.query()(client_query)
client_app.train()(client_train)
