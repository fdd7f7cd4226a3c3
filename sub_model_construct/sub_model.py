"""Sub-FM construction (spec §2): saliency-based FFN compression, the facts a sub-FM's config records, and its
sizes and names. The FedOT layer-drop emulator (spec §4.13) is in `emulator.py`, save/load of sub-FM folders in
`sub_model_io.py`.

A sub-FM is the stock transformers model with smaller `nn.Linear` modules swapped into its FFNs. Its config records
the per-layer FFN widths (`ffn_widths`), so loading rebuilds the stock model from the config, shrinks it to those
widths and loads the weights strictly. Module names stay identical to the FM's, which is what lets adapters move
between the two by name (spec §2.7, §4.11).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

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
    widths, kept = [], {}
    for i, layer in enumerate(encoder_layers(sub, family)):
        if i not in layers_retained:
            scores = ffn.saliency(layer) if saliency is None else saliency[i].to(_layer_device(layer))
            neurons = select_neurons(scores, intermediate_rank)
            ffn.slice(layer, neurons)
            if not neurons.is_meta:  # a shape-only (meta) model has no neurons to name
                kept[str(i)] = neurons.tolist()
        widths.append(ffn.width(layer))
    n = config.num_hidden_layers
    record_sub_config(
        sub.config,
        layers_retained=sorted(layers_retained),
        intermediate_rank=intermediate_rank,
        qk_rank=qk_rank,
        ffn_widths=widths,
        ffn_neurons=kept,  # {layer: the FM neurons kept, in sub-FM order}: LoRA on a cut FFN plugs in at them
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


def record_sub_config(config: PretrainedConfig, **fields) -> None:
    """Write the sub-FM facts (widths, layer maps, construction arguments) into its config."""
    for key, value in fields.items():
        setattr(config, key, value)


def compressed_layers(config: PretrainedConfig) -> list[int]:
    """Sub-FM layer indices that are not retained whole (spec §6.4: read from the sub-FM's own config)."""
    return [j for j in range(config.num_hidden_layers) if j not in set(config.layers_retained)]


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
