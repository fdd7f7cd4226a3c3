"""Zero-activation statistics on clients and neuron-level alignment of the sub-FM on the server (spec §4.9–4.10).

Instead of the reference's split modules (spec §2.6), the frozen neurons are held fixed by zeroing their gradients
(and, after training, restoring their exact values). The two are equivalent for AdamW without weight decay, and
this way the sub-FM keeps its stock modules throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from sub_model_construct.distill_model import LayerKD, prepare_for_distillation
from sub_model_construct.families import Family, backbone, encoder_layers, family_of
from sub_model_construct.ffn import changed_count, frozen_state
from sub_model_construct.train_loop import OptimConfig, steps_for, train

from .flag_groups import AlignSettings

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- statistics (§4.9)
# A gated FFN (SiLU(x·g) * (x·u)) never gives exact zeros: its "inactive" positions are those with |h| below this,
# unless --align_activation_threshold says otherwise. Measured on SmolLM2-135M over wiki-corpus blocks: 0.01 marks
# 6-28 % of a layer's positions (more in the lower layers) and spreads the per-neuron rates about threefold from the
# 10th to the 90th percentile, so the least-activated neurons are told apart (docs/pipeline.md).
GATED_THRESHOLD = 0.01


def activation_threshold(setting: float | None, family: Family) -> float:
    """The threshold below which an FFN activation counts as inactive: the flag's value, or by default 0 (the
    paper's exact-zero rule) for a one-input FFN and GATED_THRESHOLD for a gated one."""
    if setting is not None:
        return setting
    return GATED_THRESHOLD if len(family.ffn.inputs) > 1 else 0.0


class ZeroActivationCounter:
    """Counts, per compressed layer and neuron, the positions whose FFN activation is inactive (exactly zero, or
    with `threshold` > 0 of magnitude below it), and the number of positions seen (per layer: the reference counted
    positions in layer 1 only, spec §6.10). Padding positions are included, as in the reference. Hooks sit on the
    FFN output Linear, whose input is the activation."""

    def __init__(self, model: nn.Module, layers: Sequence[int], threshold: float = 0.0) -> None:
        family = family_of(backbone(model).config)
        self.threshold = threshold
        blocks = encoder_layers(model, family)
        self.zero_counts: dict[int, torch.Tensor] = {}
        self.positions: dict[int, int] = {}
        self._handles = []
        for i in layers:
            out_linear = family.ffn.output_linear(blocks[i])
            self.zero_counts[i] = torch.zeros(out_linear.in_features, dtype=torch.long)
            self.positions[i] = 0
            self._handles.append(out_linear.register_forward_pre_hook(self._hook(i)))

    def _hook(self, layer: int):
        def count(_module, inputs):
            activation = inputs[0].detach()
            inactive = activation == 0 if self.threshold == 0 else activation.abs() < self.threshold
            self.zero_counts[layer] += inactive.reshape(-1, activation.shape[-1]).sum(0).cpu()
            self.positions[layer] += activation[..., 0].numel()

        return count

    def remove(self) -> dict:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return {"zero_counts": self.zero_counts, "positions": self.positions}


@contextmanager
def counting_zero_activations(model: nn.Module, layers: Sequence[int], enabled: bool, threshold: float = 0.0):
    counter = ZeroActivationCounter(model, layers, threshold) if enabled else None
    result: dict = {}
    try:
        yield result
    finally:
        if counter is not None:
            result.update(counter.remove())


def zero_activation_rates(reports: Sequence[dict]) -> dict[int, torch.Tensor]:
    """APoZ_i[j] = sum over clients of zero counts / sum over clients of positions (spec §4.9)."""
    rates = {}
    for layer in reports[0]["zero_counts"]:
        zeros = sum(r["zero_counts"][layer] for r in reports).double()
        positions = sum(r["positions"][layer] for r in reports)
        rates[layer] = zeros / max(positions, 1)
    return rates


# ----------------------------------------------------------------------------------------------- alignment (§4.10)
def split_neurons(
    rates: torch.Tensor, retained_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frozen, updated) neuron indices: the ⌊n·r⌋ neurons with the lowest zero-activation rate stay frozen, ties
    broken by a seeded shuffle (spec §4.10, §6.10)."""
    n = rates.numel()
    shuffled = torch.randperm(n, generator=generator)
    order = shuffled[torch.argsort(rates[shuffled], stable=True)]
    n_frozen = int(n * retained_ratio)
    return torch.sort(order[:n_frozen]).values, torch.sort(order[n_frozen:]).values


class FrozenNeurons:
    """Gradient mask + exact restore for the frozen neurons of each compressed layer's FFN."""

    def __init__(self, model: nn.Module, family: Family, frozen: dict[int, torch.Tensor]) -> None:
        blocks = encoder_layers(model, family)
        self.items = []  # (slice of a per-neuron tensor, frozen neuron indices, their saved values)
        for layer, idx in frozen.items():
            for piece, saved in frozen_state(family.ffn, blocks[layer], idx):
                self.items.append((piece, idx.to(piece.param.device), saved))

    def mask_gradients(self) -> None:
        for piece, idx, _ in self.items:
            if piece.param.grad is not None:
                piece.param.grad.index_fill_(piece.axis, idx, 0)

    @torch.no_grad()
    def restore(self) -> None:
        for piece, idx, saved in self.items:
            piece.param.index_copy_(piece.axis, idx, saved)


def alignment_parameters(model: nn.Module, family: Family, layers: Sequence[int]) -> list[tuple[str, nn.Parameter]]:
    """FFN in/out weights and biases (+ the post-FFN LayerNorm for BERT/RoBERTa) of the compressed layers: the
    reference's dense2 of both split modules plus the shared output bias and LayerNorm (spec §4.10 step 3)."""
    blocks = encoder_layers(model, family)
    return [(f"{family.layers}.{i}.{name}", param) for i in layers for name, param in family.ffn.parameters(blocks[i])]


def split_all(rates: dict[int, torch.Tensor] | None, layers: Sequence[int], retained_ratio: float, seed: int):
    """({layer: frozen}, {layer: updated}) neurons of every aligned layer; nothing frozen without statistics."""
    generator = torch.Generator().manual_seed(seed)
    frozen, updated = {}, {}
    if rates is not None and retained_ratio > 0:
        for i in layers:
            frozen[i], updated[i] = split_neurons(rates[i], retained_ratio, generator)
    return frozen, updated


@contextmanager
def restoring_modes(*models: nn.Module):
    """Trainable flags and train/eval modes of `models` as they were, whatever happens inside."""
    flags = {id(p): p.requires_grad for m in models for p in m.parameters()}
    modes = [m.training for m in models]
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            for p in m.parameters():
                p.requires_grad_(flags[id(p)])
            m.train(mode)


def alignment_optimiser(config: AlignSettings, max_grad_norm: float) -> OptimConfig:
    """AdamW without weight decay (the gradient mask holds frozen neurons still only without it), linear schedule."""
    return OptimConfig(
        learning_rate=config.learning_rate,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_ratio=config.warmup_ratio,
        max_grad_norm=max_grad_norm,
    )


def align(
    teacher: nn.Module,
    student: nn.Module,
    pairs: Sequence[tuple[int, int]],
    rates: dict[int, torch.Tensor] | None,
    data,
    collate,
    config: AlignSettings,
    grad_accum_steps: int,
    seed: int,
    accelerator,
    max_grad_norm: float = 1.0,
    where: dict | None = None,
) -> dict:
    """One neuron-level alignment (spec §4.10): distil the FM (teacher, with the global adapter plugged in) into
    the sub-FM (student) on the public corpus, updating only the non-frozen neurons of the compressed layers.

    `rates` maps compressed layer -> zero-activation rate per neuron; None (or retained_ratio 0) updates everything.
    Returns the training log. Trainable flags and modes of both models are restored afterwards.
    """
    family = family_of(backbone(student).config)
    layers = [s for _, s in pairs]
    torch.manual_seed(seed)  # random crops/flips of an image corpus draw from the global RNG
    frozen, updated = split_all(rates, layers, config.retained_ratio, seed)
    effective = config.batch_size * accelerator.num_processes * grad_accum_steps
    steps = steps_for(len(data), effective, config.epochs)
    optim = alignment_optimiser(config, max_grad_norm)
    with restoring_modes(teacher, student):
        named = alignment_parameters(student, family, layers)
        prepare_for_distillation(teacher, student, [p for _, p in named])
        guard = FrozenNeurons(student, family, frozen)
        try:
            result = train(
                named,
                data,
                collate,
                LayerKD(teacher, student, pairs, alpha=0.0),
                optim=optim,
                total_steps=steps,
                micro_batch_size=config.batch_size,
                effective_batch_size=effective,
                seed=seed,
                device=accelerator.device,
                data_parallel=accelerator,
                log_every=max(1, steps // 5),
                grad_hook=guard.mask_gradients,
                desc="alignment",
                where=where,
            )
        finally:
            guard.restore()
    result.update(
        changed_parameters=changed_parameters(student, family, layers, frozen),
        steps=steps,
        effective_batch_size=effective,
        grad_accum_steps=grad_accum_steps,
        frozen_per_layer={int(k): int(v.numel()) for k, v in frozen.items()},
        updated_neurons=updated_neurons(student, family, layers, updated),
    )
    return result


def updated_neurons(model: nn.Module, family: Family, layers: Sequence[int], updated: dict) -> dict:
    """Per aligned layer, the neurons the clients must receive afterwards (communication.SubFMSync): all of them
    where nothing was frozen. Not part of the JSON log."""
    blocks = encoder_layers(model, family)
    return {i: updated.get(i, torch.arange(family.ffn.width(blocks[i]))) for i in layers}


def changed_parameters(model: nn.Module, family: Family, layers: Sequence[int], frozen: dict) -> int:
    """Parameters an alignment can change, i.e. what the server sends to clients afterwards (Fig. 2's W_fro
    update): the updated neurons' rows/columns plus the shared output bias (and LayerNorm)."""
    blocks = encoder_layers(model, family)
    return sum(changed_count(family.ffn, blocks[i], frozen[i].numel() if i in frozen else 0) for i in layers)


def next_grad_accum(current: int, floor: int, epochs: float) -> int:
    """Reference schedule of the alignment accumulation (spec §4.10): halved before each alignment while above the
    floor (NLP: start 32, floor 2 -> 16, 8, 4, 2, 2, ...; CV: start 64, floor 8), unless align_epochs <= 1e-3."""
    if epochs > 1e-3 and current > floor:
        return current // 2
    return current


def ffn_state(model: nn.Module, layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """The sub-FM weights that alignment can change (for round checkpoints and resume)."""
    family = family_of(backbone(model).config)
    return {name: p.detach().cpu().clone() for name, p in alignment_parameters(model, family, layers)}


def load_ffn_state(model: nn.Module, layers: Sequence[int], state: dict[str, torch.Tensor]) -> None:
    family = family_of(backbone(model).config)
    params = dict(alignment_parameters(model, family, layers))
    if set(params) != set(state):
        raise ValueError("checkpoint FFN weights do not match the sub-FM's compressed layers")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
