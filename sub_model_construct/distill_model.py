"""Layer-level knowledge distillation of a sub-FM from its FM (spec §3.2–3.3), shared by the pre-FL distillation
and the neuron-level alignment during FL (spec §4.10, which uses the same loss with alpha = 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .families import Family, backbone, encoder_layers, family_of


def normalised_mse(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """mean((T - S)^2) / mean(T^2) over all elements (padding positions included, as the reference; spec §3.3)."""
    return (teacher - student).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


def ffn_product(layer: nn.Module, family: Family) -> torch.Tensor:
    """M = W_out · W_in (d x d) of one layer's FFN: the quantity the weight term aligns (spec §3.3)."""
    return family.ffn.product(layer)


class _Enough(Exception):
    """Raised by the hook on the deepest layer `layer_outputs` needs: the layers above it are not computed."""


def layer_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The outputs of the given encoder layers (what `hidden_states[i + 1]` holds), with the forward stopped after
    the deepest of them: the layers above it, and any pooler or final norm, would be computed for nothing."""
    blocks = encoder_layers(model, family_of(backbone(model).config))
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def capture(i: int):
        def hook(module, args, output):
            captured[i] = output[0] if isinstance(output, tuple) else output
            if i == deepest:
                raise _Enough

        return hook

    handles = [blocks[i].register_forward_hook(capture(i)) for i in sorted(set(layers))]
    try:
        backbone(model)(**inputs)
    except _Enough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


class LayerKD(nn.Module):
    """L_KD = 1/|pairs| * sum_i [ nmse(H^T_t(i), H^S_i) + alpha * nmse(M^T_t(i), M^S_i) ]  (spec §3.3).

    `pairs` lists (teacher layer, student layer) index pairs: the compressed layers for a sub-FM (i, i), or the
    emulator layers and the FM layer each stands in for (FedOT). `weight_term_grad=False` reproduces the reference,
    whose weight term is computed from detached weights and so only changes the logged value (spec §6.1).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        pairs: Sequence[tuple[int, int]],
        alpha: float = 0.0,
        weight_term_grad: bool = True,
    ) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("layer-level distillation needs at least one compressed layer")
        self.teacher, self.student = teacher, student
        self.family = family_of(backbone(student).config)
        self.pairs = list(pairs)
        self.alpha = alpha
        self.weight_term_grad = weight_term_grad
        self._teacher_products: dict[int, torch.Tensor] | None = None

    def teacher_products(self) -> dict[int, torch.Tensor]:
        # the teacher's FFN weights never change, so M^T is computed once
        if self._teacher_products is None:
            layers = encoder_layers(self.teacher, self.family)
            with torch.no_grad():
                self._teacher_products = {t: ffn_product(layers[t], self.family) for t, _ in self.pairs}
        return self._teacher_products

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_hidden = layer_outputs(self.teacher, inputs, [t for t, _ in self.pairs])
        student_hidden = layer_outputs(self.student, inputs, [s for _, s in self.pairs])
        hidden = torch.stack([normalised_mse(teacher_hidden[t], student_hidden[s]) for t, s in self.pairs])
        loss = hidden.mean()
        parts = {"hidden_loss": loss.item()}
        if self.alpha:
            layers = encoder_layers(self.student, self.family)
            products = self.teacher_products()
            terms = []
            for t, s in self.pairs:
                student_product = ffn_product(layers[s], self.family)
                if not self.weight_term_grad:
                    student_product = student_product.detach()
                terms.append(normalised_mse(products[t], student_product))
            weight = torch.stack(terms).mean()
            parts["weight_loss"] = weight.item()
            loss = loss + self.alpha * weight
        return loss, parts


def distillation_parameters(student: nn.Module, layers: Sequence[int]) -> list[tuple[str, nn.Parameter]]:
    """Trainable set of spec §3.2: every parameter of the given (compressed) layers whose name contains none of the
    family's frozen substrings (attention; for ViT also layernorm). BERT/RoBERTa: FFN in/out + output LayerNorm."""
    family = family_of(backbone(student).config)
    blocks = encoder_layers(student, family)
    chosen = []
    for i in layers:
        for name, param in blocks[i].named_parameters():
            if not any(part in name for part in family.frozen_in_distillation):
                chosen.append((f"{family.layers}.{i}.{name}", param))
    return chosen


def prepare_for_distillation(
    teacher: nn.Module,
    student: nn.Module,
    trainable: Sequence[nn.Parameter],
    dropout_layers: Sequence[int] = (),
) -> None:
    """Freeze the teacher and everything of the student but `trainable`; both in eval mode (no dropout).

    The reference leaves the student's FFN dropout active while the teacher runs without it (spec §3.2, §6.13);
    pass the compressed layers as `dropout_layers` to reproduce that. By default we distil deterministic networks,
    which also keeps multi-process runs equal to single-process ones.
    """
    teacher.eval()
    student.eval()
    family = family_of(backbone(student).config)
    blocks = encoder_layers(student, family)
    for i in dropout_layers if family.ffn_dropout is not None else ():  # a decoder LM's layers have no dropout
        blocks[i].get_submodule(family.ffn_dropout).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
