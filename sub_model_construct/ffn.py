"""The FFN of one transformer layer as one object (spec §2): which matrices hold a neuron and what its neurons share.

A family row (families.py) describes its FFN by module names relative to a layer:

- `inputs`: the Linear d -> D matrices in which each neuron is a row (BERT's one `intermediate.dense`; a gated FFN's
  `gate_proj` and `up_proj`), each with its bias where it has one;
- `output`: the Linear D -> d matrix in which each neuron is a column (`output.dense`, `down_proj`);
- `norm`: a norm applied after the FFN residual (BERT's post-FFN LayerNorm), shared by all neurons like the output
  bias, or None.

Saliency, slicing and resizing (sub-FM construction), the neuron-level state of an alignment (which tensors hold a
neuron, what it may change, how many parameters that is), the FFN changes sent to clients and the distillation
weight term all go through this object. A width is read from the modules, never from a config attribute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NeuronSlice:
    """One tensor that holds a slice per neuron: `name` relative to the layer, the parameter and the axis of its
    neurons (0: rows of an input matrix or its bias; 1: columns of the output matrix)."""

    name: str
    param: nn.Parameter
    axis: int

    def take(self, neurons: torch.Tensor) -> torch.Tensor:
        return self.param.detach().index_select(self.axis, neurons.to(self.param.device))


@dataclass(frozen=True)
class FFN:
    """Where one layer's FFN lives (module names relative to the layer); see the module docstring."""

    inputs: tuple[str, ...]
    output: str
    norm: str | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("an FFN needs at least one input matrix")

    # ------------------------------------------------------------------------------------------- modules
    def input_linears(self, layer: nn.Module) -> list[nn.Linear]:
        return [layer.get_submodule(name) for name in self.inputs]

    def output_linear(self, layer: nn.Module) -> nn.Linear:
        return layer.get_submodule(self.output)

    def width(self, layer: nn.Module) -> int:
        """Neurons of this layer's FFN, read from its output matrix."""
        return self.output_linear(layer).in_features

    def modules(self, layer: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of the inputs, the output and the norm, in that order."""
        for name in (*self.inputs, self.output, *([self.norm] if self.norm else [])):
            yield name, layer.get_submodule(name)

    def parameters(self, layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name relative to the layer, parameter) of everything the FFN holds: what an alignment trains."""
        return [
            (f"{name}.{p}", param) for name, module in self.modules(layer) for p, param in module.named_parameters()
        ]

    # ------------------------------------------------------------------------------------------- neurons
    def neuron_slices(self, layer: nn.Module) -> list[NeuronSlice]:
        """Every tensor that holds a slice per neuron: each input's weight rows and bias, the output's columns."""
        slices = []
        for name, linear in zip(self.inputs, self.input_linears(layer)):
            slices.append(NeuronSlice(f"{name}.weight", linear.weight, 0))
            if linear.bias is not None:
                slices.append(NeuronSlice(f"{name}.bias", linear.bias, 0))
        slices.append(NeuronSlice(f"{self.output}.weight", self.output_linear(layer).weight, 1))
        return slices

    def shared(self, layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The tensors all neurons share: the output bias and the norm's parameters."""
        out = self.output_linear(layer)
        found = [(f"{self.output}.bias", out.bias)] if out.bias is not None else []
        if self.norm:
            found += [(f"{self.norm}.{p}", param) for p, param in layer.get_submodule(self.norm).named_parameters()]
        return found

    def per_neuron(self, layer: nn.Module) -> int:
        """Parameters one neuron holds (its rows, their biases and its output column)."""
        return sum(s.param.numel() // s.param.shape[s.axis] for s in self.neuron_slices(layer))

    def shared_count(self, layer: nn.Module) -> int:
        return sum(p.numel() for _, p in self.shared(layer))

    def saliency(self, layer: nn.Module) -> torch.Tensor:
        """s_j = || [W_in[j,:] for every input, W_out[:,j]] ||_2; biases excluded (spec §2.2).

        For a gated FFN (LLaMA's gate_proj, up_proj, down_proj) this is an extension of spec §2.2, which defines the
        rule for one input matrix: the same norm over every matrix that holds the neuron,
        s_j = || [W_gate[j,:], W_up[j,:], W_down[:,j]] ||_2. An activation-aware alternative is
        `sub_model.activation_saliency`."""
        inputs = [linear.weight.float().pow(2).sum(dim=1) for linear in self.input_linears(layer)]
        total = inputs[0]
        for extra in inputs[1:]:
            total = total + extra
        return torch.sqrt(total + self.output_linear(layer).weight.float().pow(2).sum(dim=0))

    # ------------------------------------------------------------------------------------------- surgery
    def slice(self, layer: nn.Module, neurons: torch.Tensor) -> None:
        """Keep only `neurons`: the inputs' rows (and bias entries) and the output's columns; the output bias
        whole. New Linear modules are made inputs first, then the output (their initial draws come in that order)."""
        new_inputs = []
        for linear in self.input_linears(layer):
            new = nn.Linear(linear.in_features, len(neurons), bias=linear.bias is not None)
            new_inputs.append(new.to(dtype=linear.weight.dtype, device=linear.weight.device))
        out = self.output_linear(layer)
        new_out = nn.Linear(len(neurons), out.out_features, bias=out.bias is not None)
        new_out.to(dtype=out.weight.dtype, device=out.weight.device)
        with torch.no_grad():
            for new, linear in zip(new_inputs, self.input_linears(layer)):
                new.weight.copy_(linear.weight[neurons])
                if linear.bias is not None:
                    new.bias.copy_(linear.bias[neurons])
            new_out.weight.copy_(out.weight[:, neurons])
            if out.bias is not None:
                new_out.bias.copy_(out.bias)
        for name, new in zip(self.inputs, new_inputs):
            _replace(layer, name, new)
        _replace(layer, self.output, new_out)

    def resize(self, layer: nn.Module, width: int) -> None:
        """Swap in FFN Linears of `width` neurons (uninitialised contents: the caller loads weights)."""
        if self.width(layer) == width:
            return
        for name, linear in zip(self.inputs, self.input_linears(layer)):
            _replace(layer, name, nn.Linear(linear.in_features, width, bias=linear.bias is not None))
        out = self.output_linear(layer)
        _replace(layer, self.output, nn.Linear(width, out.out_features, bias=out.bias is not None))

    def product(self, layer: nn.Module) -> torch.Tensor:
        """M = W_out · W_in (d x d): what the distillation weight term aligns (spec §3.3). Defined for an FFN with
        one input matrix."""
        if len(self.inputs) != 1:
            raise ValueError(
                f"the FFN weight term is defined for one input matrix, this FFN has {len(self.inputs)} "
                f"({', '.join(self.inputs)}); distil with --distill_alpha 0"
            )
        return self.output_linear(layer).weight @ self.input_linears(layer)[0].weight

    # ------------------------------------------------------------------------------------------- state
    def neuron_state(self, layer: nn.Module, neurons: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: values} of `neurons` in every per-neuron tensor plus the shared tensors whole (CPU copies): the
        FFN change a client receives after an alignment, restored by `load_neuron_state`."""
        state = {s.name: s.take(neurons).cpu().contiguous() for s in self.neuron_slices(layer)}
        state.update({name: p.detach().cpu().clone() for name, p in self.shared(layer)})
        return state

    @torch.no_grad()
    def load_neuron_state(self, layer: nn.Module, neurons: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        for s in self.neuron_slices(layer):
            index = neurons.to(s.param.device)
            s.param.index_copy_(s.axis, index, state[s.name].to(s.param.device, s.param.dtype))
        for name, p in self.shared(layer):
            p.copy_(state[name])


def _replace(layer: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    setattr(parent, child, new)


def frozen_state(ffn: FFN, layer: nn.Module, neurons: torch.Tensor) -> list[tuple[NeuronSlice, torch.Tensor]]:
    """(slice, saved values) of the frozen `neurons` of one layer: what an alignment masks and restores exactly."""
    return [(s, s.take(neurons).clone()) for s in ffn.neuron_slices(layer)]


def changed_count(ffn: FFN, layer: nn.Module, frozen: int) -> int:
    """Parameters an alignment can change in one layer with `frozen` neurons held: the other neurons' slices plus
    the shared tensors."""
    return (ffn.width(layer) - frozen) * ffn.per_neuron(layer) + ffn.shared_count(layer)
