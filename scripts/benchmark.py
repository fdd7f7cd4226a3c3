"""Client cost of the sub-FM against the FM, measured side by side in one run (ARCHITECTURE §5).

Builds an FM of the paper's shape from its config (random weights: no download; timing does not depend on the
values), the FedPFT sub-FM (layers 0 and L-1 whole, other FFNs cut to --intermediate_rank) and the FedOT emulator,
puts the same LoRA on each, and times LoRA training steps (forward + backward + AdamW) and eval forwards,
interleaving the models so that machine noise hits them alike. Also times the server-side pieces of a round
(aggregation of K adapters, plug-in). Prints a table and writes JSON.

    python scripts/benchmark.py --family roberta --batch 8 --seq 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from federated_proxy_finetuning.adapters import adapter_state, aggregate, load_adapter, with_lora
from sub_model_construct.families import FAMILIES
from sub_model_construct.sub_model import build_layer_drop_emulator, build_sub_model, encoder_layer_parameters


def make_fm(family: str, layers: int, hidden: int, ffn: int, heads: int, num_labels: int):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    common = dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_labels=num_labels,
    )
    if family == "bert":
        return BertForSequenceClassification(BertConfig(**common))
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(**common))
    if family == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(**common))
    if family == "vit":
        return ViTForImageClassification(ViTConfig(**common))
    raise ValueError(f"no benchmark model for family {family!r}")


def ffn_flops_ratio(layers: int, hidden: int, ffn: int, rank: int, kept: int, seq: int) -> float:
    """Forward multiply-accumulates of the encoder: attention projections 4·d², scores 2·T·d, FFN 2·d·D per token."""
    attention = 4 * hidden * hidden + 2 * seq * hidden
    full = layers * (attention + 2 * hidden * ffn)
    sub = layers * attention + kept * 2 * hidden * ffn + (layers - kept) * 2 * hidden * rank
    return sub / full


def batch_for(family: str, batch: int, seq: int, image_size: int, num_labels: int):
    labels = torch.randint(0, num_labels, (batch,))
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, image_size, image_size), "labels": labels}
    ids = torch.randint(5, 1000, (batch, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def time_train_step(model, batch, optimizer) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def time_forward(model, batch) -> float:
    start = time.perf_counter()
    model(**batch)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="roberta", choices=sorted(FAMILIES))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate_rank", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="tokens per example (text)")
    p.add_argument("--image_size", type=int, default=224, help="(vit)")
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model (after one warm-up)")
    p.add_argument("--clients", type=int, default=10, help="adapters aggregated in the server timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--out", default="benchmarks/client_cost.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family = FAMILIES[args.family]
    L = args.layers
    fm = make_fm(args.family, L, args.hidden, args.ffn, args.heads, 2)
    sub = build_sub_model(fm, [0, L - 1], args.intermediate_rank)
    emulator = build_layer_drop_emulator(fm, 1, 1, max(1, (L - 2) // 2))
    params = {
        "FM (FedPETuning)": encoder_layer_parameters(fm),
        "sub-FM (FedPFT)": encoder_layer_parameters(sub),
        "emulator (FedOT)": encoder_layer_parameters(emulator),
    }  # before LoRA is injected
    models = {
        "FM (FedPETuning)": with_lora(fm, family, range(L), args.lora_rank, 2 * args.lora_rank),
        "sub-FM (FedPFT)": with_lora(sub, family, range(L), args.lora_rank, 2 * args.lora_rank),
        "emulator (FedOT)": with_lora(
            emulator, family, [0, emulator.config.num_hidden_layers - 1], args.lora_rank, 2 * args.lora_rank
        ),
    }
    batch = batch_for(args.family, args.batch, args.seq, args.image_size, 2)
    optimizers = {
        k: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4) for k, m in models.items()
    }
    train_times = {k: [] for k in models}
    eval_times = {k: [] for k in models}
    for m in models.values():  # warm-up
        m.train()
        time_train_step(m, batch, optimizers[[k for k in models if models[k] is m][0]])
    for _ in range(args.repeats):
        for name, model in models.items():
            model.train()
            train_times[name].append(time_train_step(model, batch, optimizers[name]))
            model.eval()
            eval_times[name].append(time_forward(model, batch))
    fm_train = statistics.median(train_times["FM (FedPETuning)"])
    fm_eval = statistics.median(eval_times["FM (FedPETuning)"])
    rows = {}
    for name in models:
        rows[name] = {
            "encoder_layer_parameters": params[name],
            "train_step_seconds_median": statistics.median(train_times[name]),
            "train_step_ratio_to_fm": statistics.median(train_times[name]) / fm_train,
            "eval_forward_seconds_median": statistics.median(eval_times[name]),
            "eval_forward_ratio_to_fm": statistics.median(eval_times[name]) / fm_eval,
        }
    # server-side pieces of a round: aggregation of K adapters and the plug-in into the FM
    sub_model = models["sub-FM (FedPFT)"]
    state = adapter_state(sub_model)
    updates = [({k: v + 0.01 * i for k, v in state.items()}, 100, 1) for i in range(args.clients)]
    start = time.perf_counter()
    global_state = aggregate(updates, "weighted", state, 100 * args.clients, 100)
    aggregate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    load_adapter(models["FM (FedPETuning)"], global_state)
    plug_seconds = time.perf_counter() - start
    kept = 2
    result = {
        "shape": {
            k: getattr(args, k)
            for k in ("family", "layers", "hidden", "ffn", "heads", "intermediate_rank", "batch", "seq", "lora_rank")
        },
        "torch_threads": torch.get_num_threads(),
        "analytic_forward_ratio_sub_to_fm": ffn_flops_ratio(
            L, args.hidden, args.ffn, args.intermediate_rank, kept, args.seq
        ),
        "models": rows,
        "aggregate_seconds": aggregate_seconds,
        "plug_in_seconds": plug_seconds,
        "adapter_bytes": sum(v.numel() * v.element_size() for v in state.values()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"shape: {result['shape']}, threads {result['torch_threads']}, {args.repeats} timed steps each (median)")
    print(f"analytic forward ratio sub-FM/FM: {result['analytic_forward_ratio_sub_to_fm']:.3f}")
    print(f"{'model':<20} {'params':>12} {'train s/step':>13} {'ratio':>6} {'eval s/fwd':>11} {'ratio':>6}")
    for name, r in rows.items():
        print(
            f"{name:<20} {r['encoder_layer_parameters'] / 2**20:>10.1f}Mi {r['train_step_seconds_median']:>13.3f} "
            f"{r['train_step_ratio_to_fm']:>6.3f} {r['eval_forward_seconds_median']:>11.3f} {r['eval_forward_ratio_to_fm']:>6.3f}"
        )
    print(
        f"aggregate {args.clients} adapters: {aggregate_seconds * 1e3:.1f} ms; plug-in: {plug_seconds * 1e3:.1f} ms; "
        f"adapter {result['adapter_bytes'] / 1e6:.2f} MB; written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
