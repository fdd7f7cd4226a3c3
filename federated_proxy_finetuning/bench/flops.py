"""The analytic FLOP ratios of the sub-FM and the emulator to the FM (ARCHITECTURE §5), for encoders and decoder LMs:
an FFN of m matrices per neuron (2, or 3 when gated), grouped-query attention and a causal LM's head over the
vocabulary."""

from __future__ import annotations

FLOP_FORMULA = (
    "per token and layer: attention projections 2·d² + 2·d·d_kv (d_kv = d·kv_heads/heads, = d without grouped-query "
    "attention) + scores and context 2·T·d, FFN m·d·D (m matrices per neuron: 2, or 3 for a gated FFN); per token a "
    "causal LM's head V·d, kept by every model (multiply-accumulates; a LoRA backward through frozen weights costs "
    "about one more forward, so a training step keeps the ratio). With A = 2d² + 2d·d_kv + 2Td: "
    "FM: L·(A + m·dD) + Vd; sub-FM: L·A + k·m·dD + (L-k)·m·dr + Vd; emulator: L_e·(A + m·dD) + Vd "
    "(an encoder: d_kv = d, m = 2, no V term, so A = 4d² + 2Td)"
)


def layer_parts(hidden: int, ffn: int, seq: int, kv_dim: int | None = None, ffn_matrices: int = 2) -> tuple[int, int]:
    """(attention, FFN) multiply-accumulates of one layer per token."""
    kv_dim = hidden if kv_dim is None else kv_dim
    return 2 * hidden * hidden + 2 * hidden * kv_dim + 2 * seq * hidden, ffn_matrices * hidden * ffn


def flop_ratios(
    layers: int,
    hidden: int,
    ffn: int,
    rank: int,
    kept: int,
    seq: int,
    emulator_layers: int,
    *,
    kv_dim: int | None = None,
    ffn_matrices: int = 2,
    vocab: int = 0,
) -> dict:
    """Forward multiply-accumulates of each model relative to the FM (see FLOP_FORMULA); `vocab` = 0: no head over
    the vocabulary (an encoder's classifier reads one token and is not counted)."""
    attention, ffn_macs = layer_parts(hidden, ffn, seq, kv_dim, ffn_matrices)
    head = vocab * hidden
    full = layers * (attention + ffn_macs) + head
    sub = layers * attention + kept * ffn_macs + (layers - kept) * ffn_matrices * hidden * rank + head
    return {"fm": 1.0, "sub": sub / full, "emulator": (emulator_layers * (attention + ffn_macs) + head) / full}


def ffn_share(
    layers: int, hidden: int, ffn: int, seq: int, *, kv_dim: int | None = None, ffn_matrices: int = 2, vocab: int = 0
) -> float:
    """The FFNs' share of the FM's forward multiply-accumulates: the most an FFN cut can remove."""
    attention, ffn_macs = layer_parts(hidden, ffn, seq, kv_dim, ffn_matrices)
    return layers * ffn_macs / (layers * (attention + ffn_macs) + vocab * hidden)


def ffn_flops_ratio(layers: int, hidden: int, ffn: int, rank: int, kept: int, seq: int) -> float:
    """The sub-FM's forward FLOP ratio to the FM (ARCHITECTURE §5)."""
    return flop_ratios(layers, hidden, ffn, rank, kept, seq, layers)["sub"]
