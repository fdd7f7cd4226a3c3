"""The Flower ClientApp of FedPFT, FedPETuning and FedOT (see flower_app.py for what travels): a SuperNode holds
one client, rebuilds its settings, partition and client model in each message's process (the node's state keeps the
shipped model and the FFN changes received), trains a round on request and replies with its adapter."""

from __future__ import annotations

import json

import torch

from sub_model_construct.families import backbone

from .communication import apply_ffn_changes
from .flower_wire import (
    HELLO,
    INSTALL,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    record_of,
    run_settings,
    state_of,
)

try:
    from flwr.clientapp import ClientApp
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Flower is not installed: pip install -e '.[flower]' (flwr 1.42.0)") from exc


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
        """Whether the client model is here: shipped, or a local folder (`client-model`) that lacks nothing. A local
        sub-FM of a causal LM whose output projection is untied lacks the FM's projection: the server ships it."""
        if "client_model" in self.context.state:
            return True
        local = self.context.node_config.get("client-model")
        if not local:
            return False
        from transformers import AutoConfig

        from sub_model_construct.families import family_of

        config = AutoConfig.from_pretrained(str(local))
        untied = not getattr(config, "tie_word_embeddings", True)
        return not (untied and family_of(config).modality.name == "causal-lm")

    def trainer(self):
        from transformers import AutoConfig

        from sub_model_construct.sub_model import compressed_layers

        from .align import ffn_state, load_ffn_state
        from .assemble import client_partition, client_trainer, load_data
        from .models import fm_family

        s = self.settings
        fm_config = AutoConfig.from_pretrained(s.model_checkpoint)
        _, self.modality = fm_family(s, self.modality, fm_config)  # the run's modality (a causal LM: its own)
        task, _ = load_data(s, self.modality, self.accelerator, fm_config)
        partition = client_partition(s, task, self.accelerator)
        model = self.client_model(task)
        layers = compressed_layers(backbone(model).config) if s.aligning else []
        if layers and "ffn" in self.context.state:
            load_ffn_state(model, layers, state_of(self.context.state["ffn"]))
        self.save_ffn = lambda: self.context.state.__setitem__("ffn", record_of(ffn_state(model, layers)))
        trainer = client_trainer(s, task, partition, model, layers, self.accelerator)
        trainer.datasets = {self.client: trainer.datasets[self.client]}  # only its own partition is kept
        return trainer, layers

    def client_model(self, task):
        from transformers import AutoConfig

        from sub_model_construct.sub_model_io import (
            is_sub_model_config,
            load_backbone_state,
            load_sub_model,
            sub_model_from_config,
        )

        from .models import client_with_lora

        head = self.modality.head_class()
        labels = self.modality.head_kwargs(task)
        local = self.context.node_config.get("client-model")
        if local and "client_model" not in self.context.state:  # a shipped model (with what the folder lacks) wins
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
            load_backbone_state(backbone(model), state_of(stored["client_model"]), source="the shipped client model")
            if "client_output" in stored:  # an untied output projection, the FM's
                with torch.no_grad():
                    model.get_output_embeddings().weight.copy_(state_of(stored["client_output"])["weight"])
        self.modality.prepare(model)
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
        if "output_projection" in message.content:
            context.state["client_output"] = message.content["output_projection"]
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
        apply_ffn_changes(trainer.model, state_of(message.content["sub_fm"]))
        state.save_ffn()
    update = trainer.train(
        client,
        int(config["round"]),
        float(config["learning-rate"]),
        state_of(message.content["adapter"]),
        int(config["seed"]),
        bool(config["collect"]),
    )
    metrics = MetricRecord({"num-examples": update.num_examples, "loss": float(update.loss), "seconds": update.seconds})
    content = RecordDict({"metrics": metrics})
    if update.error:
        content["error"] = ConfigRecord({"text": update.error})
        return Message(content, reply_to=message)
    content["adapter"] = record_of(update.adapter)
    if update.stats is not None:
        content["zero_counts"] = record_of({str(k): v for k, v in update.stats["zero_counts"].items()})
        content["positions"] = MetricRecord({str(k): int(v) for k, v in update.stats["positions"].items()})
    return Message(content, reply_to=message)


client_app = ClientApp()
client_app.query()(client_query)
client_app.train()(client_train)
