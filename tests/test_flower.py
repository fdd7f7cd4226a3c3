"""The Flower backend: what travels (sub-FM FFN changes, replies), a client that drops out, and a real local
deployment (a SuperLink and 2 SuperNodes as separate processes) giving the simulation's numbers."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install -e '.[flower]')")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402

from federated_proxy_finetuning import flower_app, flower_wire  # noqa: E402
from federated_proxy_finetuning.client import ClientUpdate  # noqa: E402
from federated_proxy_finetuning.communication import (  # noqa: E402
    RoundPayload,
    SubFMSync,
    apply_ffn_changes,
    ffn_changes,
    ffn_shapes,
)
from federated_proxy_finetuning.server import Server  # noqa: E402
from sub_model_construct.families import encoder_layers, family_of  # noqa: E402
from sub_model_construct.sub_model import build_sub_model  # noqa: E402
from tests import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def task_identity():
    """What a ServerApp process has set when it creates messages."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(scope="module")
def sub_fm(tmp_path_factory):
    from transformers import AutoModel

    fm = AutoModel.from_pretrained(tiny.make_text_fm(tmp_path_factory.mktemp("fm")))
    return build_sub_model(fm, [0, 3], 16)


def test_ffn_changes_bring_a_stale_copy_to_the_servers_sub_fm(sub_fm):
    server, client = copy.deepcopy(sub_fm), copy.deepcopy(sub_fm)
    family = family_of(server.config)
    blocks = encoder_layers(server, family)
    changes = {1: torch.tensor([0, 3, 7]), 2: torch.tensor([15])}
    with torch.no_grad():  # an alignment: the updated neurons' rows and columns, shared bias and LayerNorm
        for layer, neurons in changes.items():
            w_in, w_out = tiny.ffn_pair(blocks[layer], family)
            w_in.weight[neurons] += 1.0
            w_in.bias[neurons] -= 0.5
            w_out.weight[:, neurons] *= 2.0
            w_out.bias += 0.25
            blocks[layer].get_submodule(family.ffn.norm).weight.mul_(1.5)
    payload = ffn_changes(server, changes)
    assert not torch.equal(
        tiny.ffn_pair(encoder_layers(client, family)[1], family)[0].weight, blocks[1].intermediate.dense.weight
    )
    apply_ffn_changes(client, payload)
    for (name, a), (_, b) in zip(server.state_dict().items(), client.state_dict().items()):
        assert torch.equal(a, b), name
    # what travels is what the bytes accounting charges (in parameters)
    sync = SubFMSync(ffn_shapes(server, family, [1, 2]), num_clients=1, element_size=4)
    sync.record_alignment(changes)
    sent = sum(t.numel() for k, t in payload.items() if not k.endswith("neurons"))
    assert sent == sync.parameters_to_send(0)


class FakeGrid:
    """Replies to `train` messages from a table (client -> reply content), leaving out clients that drop."""

    def __init__(self, nodes: dict[int, int], replies: dict[int, RecordDict]):
        self.nodes, self.replies = nodes, replies
        self.sent: list[Message] = []

    def create_message(self, content, message_type, dst_node_id, group_id):
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.nodes.values())

    def send_and_receive(self, messages, timeout=None):
        self.sent.extend(messages)
        out = []
        for m in messages:
            if m.metadata.message_type == "query":  # first contact: which client, and does it hold the model
                client = {n: c for c, n in self.nodes.items()}[m.metadata.dst_node_id]
                local = client not in self.replies
                reply = ConfigRecord({"partition-id": client, "has-model": local, "installed": True})
                out.append(Message(RecordDict({"config": reply}), reply_to=m))
                continue
            client = int(m.content["config"]["client"])
            if client in self.replies:
                reply = Message(self.replies[client], reply_to=m)
                out.append(reply)
        return out


def payload(r: int, clients: list[int]) -> RoundPayload:
    return RoundPayload(r, clients, 1e-3, False, 3, {"head.weight": torch.ones(2, 2)}, {})


def _reply(loss: float) -> RecordDict:
    return RecordDict(
        {
            "metrics": flower_wire.MetricRecord({"num-examples": 5, "loss": loss, "seconds": 0.1}),
            "adapter": flower_wire.record_of({"head.weight": torch.full((2, 2), loss)}),
        }
    )


def test_a_client_that_does_not_reply_is_recorded_as_dropped_and_the_round_goes_on(sub_fm):
    grid = FakeGrid({0: 10, 1: 11, 2: 12}, {0: _reply(0.5), 2: _reply(0.7)})
    remote = flower_app.FlowerClients(grid, round_timeout=1.0, connect_timeout=1.0)
    remote.node_of = {0: 10, 1: 11, 2: 12}
    updates = remote.train(payload(4, [0, 1, 2]))
    assert [u.client for u in updates] == [0, 2]
    assert all(isinstance(u, ClientUpdate) and u.num_examples == 5 for u in updates)
    assert torch.equal(updates[1].adapter["head.weight"], torch.full((2, 2), 0.7))
    record = remote.round_record()
    assert record["dropped_clients"] == [1]
    assert record["wire_bytes_sent"] > 0 and record["wire_bytes_received"] > 0
    # nothing is sent that the client does not lack: no alignment yet, no sub-FM changes
    assert all("sub_fm" not in m.content for m in grid.sent)


def fake_server(model, num_clients: int):
    """What Server.attach and Server.payload read: the sync, the client model, the seed and the global adapter."""
    from types import SimpleNamespace

    from federated_proxy_finetuning.adapters import LayerRenamer
    from federated_proxy_finetuning.global_adapter import GlobalAdapter

    family = family_of(model.config)
    f = SimpleNamespace(client_model=model, settings=SimpleNamespace(seed=3), remote=None)
    sync = SubFMSync(ffn_shapes(model, family, [1, 2]), num_clients, 4)
    adapter = GlobalAdapter({"head.weight": torch.ones(2, 2)}, LayerRenamer(family, range(4)))
    return SimpleNamespace(f=f, sync=sync, adapter=adapter)


def test_first_contact_ships_the_model_only_where_needed_and_sets_versions(sub_fm):
    """After a resume the sync already holds an alignment: a node sent the model now holds the current sub-FM, a
    node with a local copy holds the sub-FM as built and is charged every change."""
    server = fake_server(sub_fm, 3)
    server.sync.record_alignment({1: torch.tensor([0, 1]), 2: torch.tensor([3])})
    grid = FakeGrid({0: 10, 1: 11, 2: 12}, {0: _reply(0.5), 2: _reply(0.7)})  # client 1 has a local copy
    remote = flower_app.FlowerClients(grid, round_timeout=1.0, connect_timeout=5.0)
    shipped = remote.connect(3, sub_fm)
    assert remote.node_of == {0: 10, 1: 11, 2: 12}
    assert shipped["clients_installed"] == [0, 2] and shipped["install_bytes_on_wire"] > 0
    Server.attach(server, remote, shipped["clients_installed"], sorted(remote.node_of))
    assert server.f.remote is remote and server.sync.client_version == [1, 0, 1]
    assert server.sync.changes_for(1) and not server.sync.changes_for(0)
    # the round's payload carries the sub-FM changes to the client that lacks them only
    sent = Server.payload(server, 5, 1e-3, [0, 1], collect=True)
    assert (sent.round, sent.clients, sent.collect, sent.seed) == (5, [0, 1], True, 3)
    assert list(sent.sub_fm) == [1] and torch.equal(sent.sub_fm[1]["1.neurons"], torch.tensor([0, 1]))
    assert torch.equal(sent.adapter["head.weight"], torch.ones(2, 2))


def test_a_local_untied_causal_lm_folder_asks_for_the_shipped_model(tmp_path):
    """A node's local client-model folder is the whole client model unless it is a causal LM whose output projection
    is untied (the FM's, which a sub-FM folder lacks): then the node says it lacks the model, so the server ships
    it (the shipped model, once installed, is the one the node trains)."""
    from types import SimpleNamespace

    from transformers import BertConfig, LlamaConfig

    from federated_proxy_finetuning.flower_client import ClientState

    def holds(config, state=None) -> bool:
        folder = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        config.save_pretrained(folder)
        node = ClientState.__new__(ClientState)  # has_model reads the context only
        node.context = SimpleNamespace(state=state or {}, node_config={"client-model": str(folder)})
        return node.has_model()

    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    assert holds(LlamaConfig(tie_word_embeddings=True, **shape))
    assert not holds(LlamaConfig(tie_word_embeddings=False, **shape))
    assert holds(LlamaConfig(tie_word_embeddings=False, **shape), state={"client_model": object()})
    assert holds(BertConfig(tie_word_embeddings=False, **shape))  # an encoder ships no output projection


def test_no_reply_at_all_stops_the_round(sub_fm):
    remote = flower_app.FlowerClients(FakeGrid({}, {}), round_timeout=1.0, connect_timeout=1.0)
    remote.node_of = {0: 10}
    with pytest.raises(RuntimeError, match="no client replied"):
        remote.train(payload(1, [0]))


def test_the_run_configuration_carries_the_fedtune_command_line(tmp_path):
    fm = str(tiny.make_text_fm(tmp_path / "my fm"))
    context = type("C", (), {})()
    args = f"--model_checkpoint '{fm}' --task_name bbc --num_clients 3"
    context.run_config = {"fedtune-args": args, "modality": "text", "round-timeout": 30.0}
    settings, modality, round_timeout, _ = flower_wire.run_settings(context)
    assert (settings.model_checkpoint, settings.num_clients, modality.name, round_timeout) == (fm, 3, "text", 30.0)
    context.run_config["modality"] = "audio"
    with pytest.raises(ValueError, match="modality"):
        flower_wire.run_settings(context)
    hello = ConfigRecord({"action": flower_wire.HELLO})
    assert hello["action"] == "hello"


# ----------------------------------------------------------------------------------------------- a real deployment
def _free_port_block(size: int = 16) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + size < 65000:
            return base
    raise RuntimeError("no free port")


def _metrics(root: Path) -> list[dict]:
    (path,) = root.glob("*/*/*/metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny FedPFT (2 clients, 3 rounds, an alignment in round 2) run once by fedtune.py: the reference numbers."""
    from scripts.equality_check import COMMON, PFT, build_assets, task_flags

    root = tmp_path_factory.mktemp("flower")
    build_assets(root)
    flags = [
        *task_flags(root, image=False),
        *COMMON,  # the equality check's tiny settings, with one client per SuperNode (the last flag given wins)
        *("--num_clients", "2", "--proportion", "1.0"),
        *PFT,
        *("--sub_model_checkpoint", str(root / "text-sub")),
        *("--task_root", str(root / "task"), "--cache_dir", str(root / "cache")),
    ]
    env = tiny.subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    fedtune = ROOT / "federated_proxy_finetuning" / "fedtune.py"
    sim = subprocess.run(
        [sys.executable, str(fedtune), *flags, "--output_root", str(root / "sim")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-2000:]
    return root, flags, env, _metrics(root / "sim")


def _flower(tiny_run, engine: str, out: str) -> list[dict]:
    root, flags, env, _ = tiny_run
    env = {**env, "PY": sys.executable, "FLOWER_WORK": str(root / f"flower-{engine}")}
    command = ["bash", str(ROOT / "scripts" / "flower_local.sh"), "--supernodes", "2", "--engine", engine]
    command += ["--base-port", str(_free_port_block()), "--", *flags, "--output_root", str(root / out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    logs = "".join(p.read_text()[-1500:] for p in (root / f"flower-{engine}").glob("*.log"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs
    assert "finished:completed" in done.stdout
    (summary,) = (root / out).glob("*/*/*/summary.json")
    assert json.loads(summary.read_text())["flower"]["clients_installed"] == [0, 1]
    return _metrics(root / out)


def _same_numbers(simulated: list[dict], flower: list[dict]) -> None:
    assert [r["round"] for r in flower] == [0, 1, 2, 3]
    assert [r["aligned"] for r in flower] == [False, False, True, False]
    for a, b in zip(simulated, flower):
        assert a["fm"]["eval_accuracy"] == b["fm"]["eval_accuracy"]
        assert a["fm"]["eval_loss"] == pytest.approx(b["fm"]["eval_loss"], rel=1e-5)
        if a["round"]:
            assert a["client_loss"] == pytest.approx(b["client_loss"], rel=1e-5)
            assert (a["bytes_sent"], a["bytes_received"]) == (b["bytes_sent"], b["bytes_received"])
            assert b["dropped_clients"] == [] and b["wire_bytes_sent"] > 0 and b["wire_bytes_received"] > 0
    # round 3 carries the alignment's sub-FM changes to both clients
    assert flower[3]["bytes_sent"] > flower[1]["bytes_sent"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_local_deployment_gives_the_simulations_numbers(tiny_run):
    """A SuperLink and 2 SuperNodes as separate processes."""
    _same_numbers(tiny_run[3], _flower(tiny_run, "deployment", "dep"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_flowers_simulation_engine_gives_the_same_numbers(tiny_run):
    """The same app on Flower's simulation engine (Ray, 2 virtual SuperNodes)."""
    _same_numbers(tiny_run[3], _flower(tiny_run, "simulation", "simeng"))
