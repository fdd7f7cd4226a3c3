"""The analytic FLOP ratios of the sub-FM and the emulator to the FM (ARCHITECTURE §5)."""

from __future__ import annotations

FLOP_FORMULA = (
    "per token and layer: attention projections 4·d² + scores and context 2·T·d, FFN 2·d·D (multiply-accumulates; "
    "a LoRA backward through frozen weights costs about one more forward, so a training step keeps the ratio). "
    "FM: L·(4d² + 2Td + 2dD); sub-FM: L·(4d² + 2Td) + k·2dD + (L-k)·2dr; emulator: L_e·(4d² + 2Td + 2dD)"
)


def flop_ratios(layers: int, hidden: int, ffn: int, rank: int, kept: int, seq: int, emulator_layers: int) -> dict:
    """Forward multiply-accumulates of the encoder relative to the FM (see FLOP_FORMULA)."""
    attention = 4 * hidden * hidden + 2 * seq * hidden
    full_layer = attention + 2 * hidden * ffn
    full = layers * full_layer
    sub = layers * attention + kept * 2 * hidden * ffn + (layers - kept) * 2 * hidden * rank
    return {"fm": 1.0, "sub": sub / full, "emulator": emulator_layers * full_layer / full}


def ffn_flops_ratio(layers: int, hidden: int, ffn: int, rank: int, kept: int, seq: int) -> float:
    """The sub-FM's forward FLOP ratio to the FM (ARCHITECTURE §5)."""
    return flop_ratios(layers, hidden, ffn, rank, kept, seq, layers)["sub"]
