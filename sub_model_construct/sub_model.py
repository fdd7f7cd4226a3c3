"""Sub-FM construction (spec §2): saliency-based FFN compression, the FedOT layer-drop emulator (spec §4.13),
and save/load of sub-FM checkpoints as ordinary transformers folders.

A sub-FM is the stock transformers model with smaller `nn.Linear` modules swapped into its FFNs. Its config records
the per-layer FFN widths (`ffn_widths`), so loading rebuilds the stock model from the config, shrinks it to those
widths and loads the weights strictly. Module names stay identical to the FM's, which is what lets adapters move
between the two by name (spec §2.7, §4.11).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from . import reads
from .families import backbone, encoder_layers, family_of

logger = logging.getLogger(__name__)


class SubModelError(ValueError):
    """Bad construction arguments or an inconsistent sub-FM checkpoint."""


# ----------------------------------------------------------------------------------------------- saliency (§2.2)
def select_neurons(saliency: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` most salient neurons, in their original (ascending) order (spec §2.2)."""
    top = torch.topk(saliency, keep, largest=True, sorted=True).indices
    return torch.sort(top).values


@torch.no_grad()
def activation_saliency(
    model: nn.Module, batches: Iterable, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """Activation-aware saliency in the manner of FLAP / Wanda (an option beside spec §2.2's weight rule):

        s_j = || W_out[:, j] ||_2 * sqrt( E[h_j^2] ),

    h_j being neuron j's input to the FFN output matrix (for a gated FFN h_j = SiLU(x·g_j) * (x·u_j)), the mean taken
    over the tokens of `batches` (public-corpus blocks: token-id tensors, or dicts of model inputs; positions whose
    attention_mask is 0 are left out). Returns {layer index: saliency} for `layers` (default: every layer), on the
    CPU in float32, ready for `build_sub_model(..., saliency=...)`. The input is read by a forward pre-hook on the
    output Linear, as the zero-activation counter of an alignment does."""
    family = family_of(backbone(model).config)
    blocks = encoder_layers(model, family)
    layers = list(range(len(blocks))) if layers is None else list(layers)
    device = next(model.parameters()).device
    squares = {i: torch.zeros(family.ffn.width(blocks[i]), dtype=torch.float64) for i in layers}
    counts = dict.fromkeys(layers, 0)
    mask: list[torch.Tensor | None] = [None]

    def hook(i: int):
        def accumulate(_module, args):
            h = args[0].detach().double().reshape(-1, args[0].shape[-1])
            if mask[0] is not None:
                h = h[mask[0].reshape(-1).to(h.device).bool()]
            squares[i] += h.pow(2).sum(0).cpu()
            counts[i] += h.shape[0]

        return accumulate

    handles = [family.ffn.output_linear(blocks[i]).register_forward_pre_hook(hook(i)) for i in layers]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {"input_ids": batch} if isinstance(batch, torch.Tensor) else dict(batch)
            inputs = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
            mask[0] = inputs.get("attention_mask")
            backbone(model)(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not all(counts.values()):
        raise SubModelError("activation saliency needs at least one token")
    saliency = {}
    for i in layers:
        column_norms = family.ffn.output_linear(blocks[i]).weight.detach().double().norm(dim=0).cpu()
        saliency[i] = (column_norms * (squares[i] / counts[i]).sqrt()).float()
    return saliency


def _replace(parent: nn.Module, path: str, new: nn.Module) -> None:
    owner_path, _, child = path.rpartition(".")
    owner = parent.get_submodule(owner_path) if owner_path else parent
    setattr(owner, child, new)


def fm_ffn_width(config: PretrainedConfig) -> int:
    """The FFN width of a model of this config, read from its modules (built on the meta device: no memory, no
    weights), so a family whose config names its FFN width otherwise needs nothing more than its table row."""
    family = family_of(config)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return family.ffn.width(encoder_layers(model, family)[0])


# ----------------------------------------------------------------------------------------------- validation
def validate_construction(
    config: PretrainedConfig,
    layers_retained: Sequence[int],
    intermediate_rank: int,
    qk_rank: int,
    ffn_width: int | None = None,
) -> None:
    """Raise SubModelError with one clear sentence for any argument the construction cannot honour. `ffn_width`:
    the FM's FFN width when known (else read from a meta-device model of the config)."""
    n_layers, d = config.num_hidden_layers, config.hidden_size
    d_ffn = fm_ffn_width(config) if ffn_width is None else ffn_width
    if intermediate_rank <= 0 or intermediate_rank > d_ffn:
        raise SubModelError(f"--intermediate_rank must be in 1..{d_ffn} (the FM's FFN width), got {intermediate_rank}")
    bad = [i for i in layers_retained if not 0 <= i < n_layers]
    if bad:
        raise SubModelError(f"--layers_retained index {bad[0]} is out of range: the FM has layers 0..{n_layers - 1}")
    if len(set(layers_retained)) != len(layers_retained):
        raise SubModelError(f"--layers_retained has duplicated indices: {list(layers_retained)}")
    if qk_rank != d:
        # spec §2.4: the reference never implemented attention compression; only qk_rank == hidden_size works
        raise SubModelError(
            f"--qk_rank {qk_rank} != hidden size {d}: attention compression is not supported "
            f"(only the FFN is compressed, spec §2.4); pass --qk_rank {d}"
        )


# ----------------------------------------------------------------------------------------------- construction
def build_sub_model(
    fm: PreTrainedModel,
    layers_retained: Sequence[int],
    intermediate_rank: int,
    qk_rank: int | None = None,
    saliency: Mapping[int, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """Return a new sub-FM: every layer kept, FFNs of layers not in `layers_retained` cut to the
    `intermediate_rank` most salient neurons; everything else copied from the FM (spec §2.2–2.3).

    `saliency`: {layer index: one value per neuron} for every compressed layer (e.g. `activation_saliency`);
    None ranks the neurons by the weight rule of spec §2.2 (`FFN.saliency`)."""
    config = fm.config
    family = family_of(config)
    qk_rank = config.hidden_size if qk_rank is None else qk_rank
    ffn = family.ffn
    validate_construction(config, layers_retained, intermediate_rank, qk_rank, ffn.width(encoder_layers(fm, family)[0]))
    if saliency is not None:
        _check_saliency(saliency, [ffn.width(layer) for layer in encoder_layers(fm, family)], layers_retained)
    sub = copy.deepcopy(fm)
    widths = []
    for i, layer in enumerate(encoder_layers(sub, family)):
        if i not in layers_retained:
            scores = ffn.saliency(layer) if saliency is None else saliency[i].to(_layer_device(layer))
            ffn.slice(layer, select_neurons(scores, intermediate_rank))
        widths.append(ffn.width(layer))
    n = config.num_hidden_layers
    _record_sub_config(
        sub.config,
        layers_retained=sorted(layers_retained),
        intermediate_rank=intermediate_rank,
        qk_rank=qk_rank,
        ffn_widths=widths,
        layer_map=list(range(n)),
        layer_targets=list(range(n)),
        fm_num_hidden_layers=n,
    )
    return sub


def _layer_device(layer: nn.Module) -> torch.device:
    return next(layer.parameters()).device


def _check_saliency(saliency: Mapping[int, torch.Tensor], widths: Sequence[int], layers_retained) -> None:
    for i, width in enumerate(widths):
        if i in layers_retained:
            continue
        if i not in saliency:
            raise SubModelError(f"saliency given for layers {sorted(saliency)} but not for compressed layer {i}")
        if tuple(saliency[i].shape) != (width,):
            raise SubModelError(
                f"saliency of layer {i} has shape {tuple(saliency[i].shape)}, the layer has {width} FFN neurons"
            )


def uniform_drop_plan(n_layers: int, adapter_bottom: int, adapter_top: int, emulator_layers: int) -> list[int]:
    """FedOT layer plan (spec §4.13, an assumption): bottom/top adapter layers kept, `emulator_layers` of the middle
    layers chosen uniformly (every k-th layer). Returns the FM indices kept, ascending."""
    middle = list(range(adapter_bottom, n_layers - adapter_top))
    if adapter_bottom + adapter_top >= n_layers:
        raise SubModelError(f"adapter layers ({adapter_bottom}+{adapter_top}) leave no middle layers of {n_layers}")
    if not 1 <= emulator_layers <= len(middle):
        raise SubModelError(f"--emulator_layers must be in 1..{len(middle)}, got {emulator_layers}")
    step = len(middle) / emulator_layers
    kept_middle = [middle[int(k * step)] for k in range(emulator_layers)]
    return list(range(adapter_bottom)) + kept_middle + list(range(n_layers - adapter_top, n_layers))


def build_layer_drop_emulator(
    fm: PreTrainedModel, adapter_bottom: int, adapter_top: int, emulator_layers: int
) -> PreTrainedModel:
    """Offsite-tuning emulator for FedOT: full copies of the kept FM layers, the others dropped (spec §4.13).

    `layer_map[j]` is the FM layer that sub-FM layer j was copied from (used to plug LoRA back in);
    `layer_targets[j]` is the FM layer whose output layer j stands in for (the last layer of the block it replaces),
    used by layer-level distillation of the emulator.
    """
    config = fm.config
    family = family_of(config)
    n = config.num_hidden_layers
    kept = uniform_drop_plan(n, adapter_bottom, adapter_top, emulator_layers)
    sub = copy.deepcopy(fm)
    layers = encoder_layers(sub, family)
    widths = [family.ffn.width(layers[i]) for i in kept]
    new_layers = nn.ModuleList([layers[i] for i in kept])
    _replace(backbone(sub), family.layers, new_layers)
    targets = [(kept[j + 1] - 1) if j + 1 < len(kept) else n - 1 for j in range(len(kept))]
    sub.config.num_hidden_layers = len(kept)
    retained = list(range(adapter_bottom)) + list(range(len(kept) - adapter_top, len(kept)))
    _record_sub_config(
        sub.config,
        layers_retained=retained,
        intermediate_rank=max(widths),
        qk_rank=config.hidden_size,
        ffn_widths=widths,
        layer_map=kept,
        layer_targets=targets,
        fm_num_hidden_layers=n,
    )
    return sub


def _record_sub_config(config: PretrainedConfig, **fields) -> None:
    for key, value in fields.items():
        setattr(config, key, value)


# ----------------------------------------------------------------------------------------------- save / load
def is_sub_model_config(config: PretrainedConfig) -> bool:
    return all(hasattr(config, key) for key in ("ffn_widths", "layer_map"))


def compressed_layers(config: PretrainedConfig) -> list[int]:
    """Sub-FM layer indices that are not retained whole (spec §6.4: read from the sub-FM's own config)."""
    return [j for j in range(config.num_hidden_layers) if j not in set(config.layers_retained)]


def save_sub_model(model: PreTrainedModel, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save the bare backbone (with pooler where the family has one) as a transformers folder + parameter counts."""
    path = Path(path)
    base = backbone(model)
    path.mkdir(parents=True, exist_ok=True)
    base.config.architectures = [type(base).__name__]
    base.config.save_pretrained(path)
    # Written directly (not save_pretrained): transformers 5 renames some families' keys to legacy names on save,
    # and a sub-FM is read back only by load_sub_model, which expects the live module names.
    state = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    counts = {"encoder_layer_parameters": encoder_layer_parameters(base), **(extra or {})}
    (path / "sub_model_info.json").write_text(json.dumps(counts, indent=2) + "\n")


def load_sub_model(
    path: str | os.PathLike, model_class=AutoModel, torch_dtype: torch.dtype | None = None, **config_kwargs
) -> PreTrainedModel:
    """Load a sub-FM folder into `model_class` (AutoModel, AutoModelForSequenceClassification, ...).

    The stock model is built from the config, its FFNs are shrunk to the recorded widths and the checkpoint is loaded
    strictly into the backbone. The only tolerated difference is a pooler that the chosen head class does not build
    (e.g. RobertaForSequenceClassification, spec §2.7); a head (classifier) is newly initialised, as with
    `from_pretrained` on a bare checkpoint.
    """
    path = Path(path)
    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise SubModelError(f"{path} is not a sub-FM folder (needs config.json and model.safetensors)")
    with reads.reading(path / "config.json", "sub-FM config"):
        config = AutoConfig.from_pretrained(path, **config_kwargs)
    if not is_sub_model_config(config):
        raise SubModelError(f"{path} is a plain checkpoint, not a sub-FM (its config has no ffn_widths/layer_map)")
    model = sub_model_from_config(config, model_class, source=str(path))
    with reads.reading(weights, "weights file"):
        state = load_file(str(weights))
    load_backbone_state(backbone(model), state, source=str(path))
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model


def sub_model_from_config(config, model_class=AutoModel, source: str = "config") -> PreTrainedModel:
    """The stock model of a sub-FM config with its FFNs shrunk to the recorded widths (weights uninitialised)."""
    family = family_of(config)
    model = model_class.from_config(config)
    layers = encoder_layers(model, family)
    if len(layers) != len(config.ffn_widths):
        raise SubModelError(f"{source}: config lists {len(config.ffn_widths)} FFN widths for {len(layers)} layers")
    for layer, width in zip(layers, config.ffn_widths):
        family.ffn.resize(layer, width)
    return model


def load_backbone_state(base: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load, except a `pooler.*` the backbone does not build. Shapes are checked with a clear error."""
    own = base.state_dict()
    no_pooler = getattr(base, "pooler", None) is None
    unexpected = [k for k in state if k not in own and not (no_pooler and k.startswith("pooler."))]
    missing = [k for k in own if k not in state]
    if missing or unexpected:
        raise SubModelError(
            f"{source}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in own.items():
        if tensor.shape != state[key].shape:
            raise SubModelError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, model expects {tuple(tensor.shape)}"
            )
    base.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


# ----------------------------------------------------------------------------------------------- sizes and names
def encoder_layer_parameters(model: nn.Module) -> int:
    """Parameters inside the encoder layers only: the tables' "Transformers Params" (spec §2.8)."""
    family = family_of(backbone(model).config)
    return sum(p.numel() for p in encoder_layers(model, family).parameters())


def mebi(n: int) -> str:
    return f"{n / 2**20:.1f}Mi"


def sub_model_name(model_checkpoint: str, layers_retained: Sequence[int], qk_rank: int, intermediate_rank: int) -> str:
    """spec §2.7: sub-{basename}-retained{indices joined}-r1{qk_rank}-r2{intermediate_rank}."""
    base = os.path.basename(os.path.normpath(model_checkpoint))
    return f"sub-{base}-retained{''.join(str(i) for i in layers_retained)}-r1{qk_rank}-r2{intermediate_rank}"


def distilled_name(
    sub_name: str, corpus: str, lr: float, max_grad_norm: float, epochs: float, alpha: float, batch: int
) -> str:
    """spec §3.5: {subname}-distilled-{corpus}-lr..-mgn..-epoch..-da..-bs..-with-wl."""
    return f"{sub_name}-distilled-{corpus}-lr{lr}-mgn{max_grad_norm}-epoch{epochs}-da{alpha}-bs{batch}-with-wl"


def check_derived_from(sub_config: PretrainedConfig, fm_config: PretrainedConfig, sub_path: str) -> None:
    """Refuse a sub-FM that was not built from this FM (family, width or depth differ)."""
    problems = []
    if sub_config.model_type != fm_config.model_type:
        problems.append(f"family {sub_config.model_type} vs {fm_config.model_type}")
    if sub_config.hidden_size != fm_config.hidden_size:
        problems.append(f"hidden size {sub_config.hidden_size} vs {fm_config.hidden_size}")
    fm_layers = getattr(sub_config, "fm_num_hidden_layers", sub_config.num_hidden_layers)
    if fm_layers != fm_config.num_hidden_layers:
        problems.append(f"built from a {fm_layers}-layer FM, this FM has {fm_config.num_hidden_layers}")
    if problems:
        raise SubModelError(f"sub-FM {sub_path} was not derived from the given FM: " + "; ".join(problems))
