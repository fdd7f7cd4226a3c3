"""The run's models (spec §2.7, §4.4, §4.13): the FM with its new head and LoRA, and the client model the method's
clients train (the FM itself, a sub-FM or an emulator) with LoRA on its tuned layers, plus the layer renamer between
them and the layers an alignment pairs. Built once at start-up (assemble.py) and by a Flower client.
"""

from __future__ import annotations

import dataclasses

import torch

from sub_model_construct import reads
from sub_model_construct.cli import UsageError
from sub_model_construct.emulator import build_layer_drop_emulator
from sub_model_construct.families import Family, UnsupportedModelError, backbone, encoder_layers, family_of
from sub_model_construct.sub_model import check_derived_from, compressed_layers, encoder_layer_parameters
from sub_model_construct.sub_model_io import load_sub_model

from .adapters import LayerRenamer, adapter_state, check_adapters_match, with_lora
from .modality import Modality, of_family
from .settings import FedSettings


def fm_family(s: FedSettings, modality: Modality, fm_config) -> tuple[Family, Modality]:
    """The FM's family row and the modality the run takes for it on `modality`'s command line."""
    try:
        family = family_of(fm_config)
    except UnsupportedModelError as exc:
        raise UsageError(str(exc)) from exc
    return family, of_family(s, family, modality)


def client_backbone(s: FedSettings, fm, head_class, labels: dict):
    """The sub-FM or emulator the clients train, checked against the method (spec §4.13)."""
    n = fm.config.num_hidden_layers
    if s.sub_model_checkpoint:
        sub = load_sub_model(s.sub_model_checkpoint, head_class, **labels)
        check_derived_from(sub.config, fm.config, s.sub_model_checkpoint)
        share_output_embeddings(fm, sub)
    else:  # FedOT without a built emulator: uniform layer drop now
        bottom, top = s.adapter_layers
        sub = build_layer_drop_emulator(fm, bottom, top, s.emulator_layers or max(1, (n - bottom - top) // 2))
    config = backbone(sub).config
    s.kind.client.check_built(s.method, s.sub_model_checkpoint, list(config.layer_map) != list(range(n)))
    retained = list(config.layers_retained)
    if s.align.retained_layers_idx is not None and s.kind.aligns and sorted(s.align.retained_layers_idx) != retained:
        raise UsageError(
            f"--retained_layers_idx {list(s.align.retained_layers_idx)} differs from the sub-FM's layers_retained "
            f"{retained}; leave it out (it is read from the sub-FM config)"
        )
    return sub


def kept_neurons(s: FedSettings, sub, fm, family: Family) -> dict[int, torch.Tensor]:
    """{client layer: the FM neurons its cut FFN kept}, as its construction recorded them (`ffn_neurons`); every
    cut layer must have them when LoRA covers the FFN (--lora_ffn), else a sub-FM built before they were recorded
    is refused in one line."""
    config = backbone(sub).config
    recorded = getattr(config, "ffn_neurons", None) or {}
    fm_widths = [family.ffn.width(layer) for layer in encoder_layers(fm, family)]
    cut = [j for j, i in enumerate(config.layer_map) if config.ffn_widths[j] < fm_widths[i]]
    missing = [j for j in cut if str(j) not in recorded]
    if s.lora.ffn and missing:
        raise UsageError(
            f"--lora_ffn needs the kept neurons of every cut FFN, and {s.sub_model_checkpoint} records none for "
            f"layers {missing}: rebuild it with sub_model_construct/distill.py"
        )
    return {j: torch.tensor(recorded[str(j)], dtype=torch.long) for j in cut if str(j) in recorded}


def untied_output_projection(model):
    """A causal LM's output projection when it is not tied to the input embeddings, else None (tied, or a
    classification model, which has none)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None or model.config.tie_word_embeddings else head


@torch.no_grad()
def share_output_embeddings(fm, sub) -> None:
    """A causal LM's output projection is the FM's: distillation trains the backbone only. A tied one already is
    (through the input embeddings); an untied one is copied. Classification models have none."""
    head = untied_output_projection(sub)
    if head is not None:
        head.weight.copy_(fm.get_output_embeddings().weight)


def lora_options(s: FedSettings) -> dict:
    """The LoRA settings as with_lora's keywords (the group's fields are named as its parameters)."""
    return {field.name: getattr(s.lora, field.name) for field in dataclasses.fields(s.lora)}


def tuned_layers(s: FedSettings, config) -> list[int]:
    """The client model's layers that carry LoRA (methods.ClientModel.tuned_layers)."""
    return s.kind.client.tuned_layers(config)


def client_with_lora(s: FedSettings, model):
    """The client model (sub-FM, emulator or FM, with its head) as the clients train it: LoRA on its tuned layers.
    The one place this is decided, for the simulation's clients and for a client on another machine."""
    config = backbone(model).config
    return with_lora(model, family_of(config), tuned_layers(s, config), **lora_options(s))


def build_models(s: FedSettings, modality: Modality, task, fm_config):
    """(FM with LoRA, client model with LoRA, renamer, aligned layer pairs, client and FM encoder-layer parameters)."""
    family, modality = fm_family(s, modality, fm_config)
    labels = modality.head_kwargs(task)
    torch.manual_seed(s.seed)  # the FM's new head and LoRA init become the initial global adapter (spec §4.4)
    new_modules = (*(f"{head}." for head in family.head), "pooler.")  # initialised here, not read from the FM
    fm = reads.pretrained(modality.head_class(), s.model_checkpoint, new_modules, **labels)
    modality.prepare(fm)
    fm_params = encoder_layer_parameters(fm)  # counted before LoRA is injected: the tables' "Params"
    n = fm_config.num_hidden_layers
    if not s.kind.client.reads_folder:  # the clients train the FM itself
        fm_peft = with_lora(fm, family, range(n), **lora_options(s))
        return fm_peft, fm_peft, LayerRenamer(family, list(range(n))), [], fm_params, fm_params
    sub = client_backbone(s, fm, modality.head_class(), labels)
    modality.prepare(sub)
    sub_config = backbone(sub).config
    layer_map = list(sub_config.layer_map)
    tuned = tuned_layers(s, sub_config)
    sub_params = encoder_layer_parameters(sub)
    fm_peft = with_lora(fm, family, [layer_map[j] for j in tuned], **lora_options(s))
    client = client_with_lora(s, sub)
    renamer = LayerRenamer(family, layer_map, kept_neurons(s, sub, fm, family))
    if s.lora.ffn:
        renamer.zero_cut_neurons(fm_peft)
    fm_state = adapter_state(fm_peft)
    check_adapters_match(renamer.to_fm(adapter_state(client), fm_state), fm_state)
    compressed = compressed_layers(sub_config) if s.kind.aligns else []
    pairs = [(sub_config.layer_targets[j], j) for j in compressed]
    return fm_peft, client, renamer, pairs, sub_params, fm_params
