"""What a client pays: the FM, the FedPFT sub-FM and the FedOT emulator measured side by side in one run.

For each setting (the paper's shape from a config with random weights, and the real all-mpnet-base-v2 weights when
the paper-shape asset is installed) it builds the FM, the sub-FM (layers 0 and L-1 whole, the other FFNs cut to
--intermediate_rank by saliency) and the layer-drop emulator, puts the suite's LoRA on each and reports:

- training-step time (forward + backward + AdamW on the LoRA and head), --repeats interleaved steps per model
  after a warm-up (min / median / max), and the eval-forward time likewise;
- the peak memory of one client's training step, each model in a fresh process that loads it the way a client
  does: peak RSS on CPU (sampled every millisecond during three steps), torch.cuda.max_memory_allocated on a GPU;
  on CPU with glibc also the peak RSS with freed memory returned to the system (a second process per model with
  MALLOC_MMAP_THRESHOLD_=131072), which follows what the step holds rather than what glibc keeps for reuse;
- the analytic FLOP ratio to the FM, with its formula;
- the server-side pieces of a round (aggregation of --clients adapters, plug-in into the FM);
- with --profile-ops N, where a training step goes: torch.profiler's self CPU time per operator, grouped into
  matrix products (the only work a cut FFN removes), dropout masks and everything else, per model side by side.

Prints a markdown table per setting and writes JSON (--out) and the markdown beside it (.md).

    python scripts/benchmark.py                       # full: 10 repeats, batch 8 x 128 tokens
    python scripts/benchmark.py --quick               # a smoke run on a small config, under a minute
    python scripts/benchmark.py --device cuda         # on a GPU (memory: CUDA max allocated)
    python scripts/benchmark.py --threads 1 --no-memory --profile-ops 3   # time, then operators of 3 steps each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from federated_proxy_finetuning.adapters import adapter_state, aggregate, load_adapter, with_lora
from sub_model_construct.families import FAMILIES, family_of
from sub_model_construct.sub_model import (
    build_layer_drop_emulator,
    build_sub_model,
    encoder_layer_parameters,
    load_sub_model,
    save_sub_model,
)

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"fm": "FM (FedPETuning)", "sub": "sub-FM (FedPFT)", "emulator": "emulator (FedOT)"}
MPNET = ROOT / "pretrain_models" / "all-mpnet-base-v2"
FLOP_FORMULA = (
    "per token and layer: attention projections 4·d² + scores and context 2·T·d, FFN 2·d·D (multiply-accumulates; "
    "a LoRA backward through frozen weights costs about one more forward, so a training step keeps the ratio). "
    "FM: L·(4d² + 2Td + 2dD); sub-FM: L·(4d² + 2Td) + k·2dD + (L-k)·2dr; emulator: L_e·(4d² + 2Td + 2dD)"
)


# ------------------------------------------------------------------------------------------------ models
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


def head_class(family: str):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    return AutoModelForImageClassification if family == "vit" else AutoModelForSequenceClassification


def emulator_middle_layers(layers: int) -> int:
    return max(1, (layers - 2) // 2)


def lora_layers(key: str, config) -> list[int]:
    """FedPFT and FedPETuning tune attention LoRA in every layer; FedOT its adapter layers (bottom and top)."""
    n = config.num_hidden_layers
    return [0, n - 1] if key == "emulator" else list(range(n))


def client_model(key: str, model, family: str, args):
    fam = FAMILIES[family]
    return with_lora(model, fam, lora_layers(key, model.config), args.lora_rank, 2 * args.lora_rank)


# ------------------------------------------------------------------------------------------------ FLOPs
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


# ------------------------------------------------------------------------------------------------ timing
def batch_for(family: str, batch: int, seq: int, image_size: int, num_labels: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_labels, (batch,), generator=gen)
    if family == "vit":
        out = {"pixel_values": torch.randn(batch, 3, image_size, image_size, generator=gen), "labels": labels}
    else:
        ids = torch.randint(5, 1000, (batch, seq), generator=gen)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def client_optimizer(model) -> torch.optim.Optimizer:
    """AdamW on what a client trains (LoRA and head): the parameters that require gradients."""
    return torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)


def train_step(model, batch, optimizer) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_train_step(model, batch, optimizer, device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    train_step(model, batch, optimizer)
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def time_forward(model, batch, device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    model(**batch)
    sync(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
        "all": values,
    }


def interleaved_times(models: dict, batch: dict, repeats: int, device: str, progress) -> dict:
    """Training-step and eval-forward seconds per model: one warm-up each, then `repeats` rounds in which every
    model takes one step in turn (so that machine noise hits them alike)."""
    optimizers = {k: client_optimizer(m) for k, m in models.items()}
    train = {k: [] for k in models}
    forward = {k: [] for k in models}
    for key, model in models.items():
        model.train()
        time_train_step(model, batch, optimizers[key], device)
        model.eval()
        time_forward(model, batch, device)
    for i in range(repeats):
        for key, model in models.items():
            model.train()
            train[key].append(time_train_step(model, batch, optimizers[key], device))
            model.eval()
            forward[key].append(time_forward(model, batch, device))
        progress(f"timing {i + 1}/{repeats}")
    return {k: {"train_step_seconds": spread(train[k]), "eval_forward_seconds": spread(forward[k])} for k in models}


# ------------------------------------------------------------------------------------------------ operators
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"})
OP_GROUPS = (
    ("matrix products (mm, addmm, bmm)", lambda op: op in MATMUL_OPS),
    ("dropout masks (bernoulli_)", lambda op: op == "aten::bernoulli_"),
    ("everything else (elementwise, softmax, LayerNorm, copies, AdamW)", lambda op: True),
)


def operator_profile(models: dict, batch: dict, steps: int, progress) -> dict:
    """Self CPU seconds per operator of one training step (torch.profiler), the mean of `steps` profiled steps per
    model taken in turn, and their sums by OP_GROUPS: which work the sub-FM's cut FFNs remove and which they leave."""
    from torch.profiler import ProfilerActivity, profile

    optimizers = {k: client_optimizer(m) for k, m in models.items()}
    ops = {k: {} for k in models}
    for key, model in models.items():  # warm-up: the optimiser's state and the allocator, outside the profile
        model.train()
        train_step(model, batch, optimizers[key])
    for i in range(steps):
        for key, model in models.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_step(model, batch, optimizers[key])
            for event in prof.key_averages():
                ops[key][event.key] = ops[key].get(event.key, 0.0) + event.self_cpu_time_total / 1e6 / steps
        progress(f"operator profile {i + 1}/{steps}")
    groups = {}
    for key, per_op in ops.items():
        sums = dict.fromkeys((name for name, _ in OP_GROUPS), 0.0)
        for op, seconds in per_op.items():
            sums[next(name for name, member in OP_GROUPS if member(op))] += seconds
        groups[key] = sums
    return {"steps": steps, "seconds_by_operator": ops, "seconds_by_group": groups}


# ------------------------------------------------------------------------------------------------ memory
class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current_rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.current_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_rss())


def memory_child(spec: dict) -> dict:
    """In a fresh process: load one client model as a client does, add LoRA and AdamW, take three training steps;
    return the memory before the steps and the peak during them."""
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    heads = head_class(spec["family"])
    imports = PeakRSS.current_rss()  # the runtime (python, torch, transformers) before any model exists
    if spec["kind"] == "sub_model":
        model = load_sub_model(spec["path"], heads, num_labels=2)
    else:
        model = heads.from_pretrained(spec["path"], num_labels=2)
    args = argparse.Namespace(lora_rank=spec["lora_rank"])
    model = client_model(spec["key"], model, spec["family"], args).to(device)
    model.train()
    optimizer = client_optimizer(model)
    batch = batch_for(spec["family"], spec["batch"], spec["seq"], spec["image_size"], 2, device)
    out = {"parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()), "imports_bytes": imports}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["before_bytes"] = torch.cuda.memory_allocated()
        for _ in range(3):
            train_step(model, batch, optimizer)
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
        out["measure"] = "CUDA max allocated"
    elif Path("/proc/self/statm").is_file():
        with PeakRSS() as rss:
            before = rss.current_rss()
            for _ in range(3):
                train_step(model, batch, optimizer)
        out.update(before_bytes=before, peak_bytes=rss.peak, measure="peak RSS")
    else:  # no /proc: the process's lifetime peak, which includes loading
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        for _ in range(3):
            train_step(model, batch, optimizer)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out.update(before_bytes=before, peak_bytes=peak, measure="lifetime peak RSS (ru_maxrss)")
    return out


# glibc keeps memory that PyTorch frees for reuse (its mmap threshold grows with the blocks freed), so a CPU peak
# RSS holds several hundred MiB that no tensor uses. A fixed threshold of 128 KiB returns freed blocks to the system:
# the peak RSS then follows what the step really holds, at 21-25 % more step time, which is why only the memory
# children are run this way, never the timed steps or the suite's runs.
RETURNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


def measure_memory(spec: dict, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {spec['key']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ one setting
def run_setting(name: str, args, device: str, progress) -> dict:
    torch.manual_seed(0)
    if name == "random":
        family = args.family
        fm = make_fm(family, args.layers, args.hidden, args.ffn, args.heads, 2)
        source = f"{family} config, random weights"
    else:
        family = "mpnet"
        fm = head_class(family).from_pretrained(str(args.mpnet), num_labels=2)
        family = family_of(fm.config).name
        source = f"real weights: {args.mpnet.relative_to(ROOT) if args.mpnet.is_relative_to(ROOT) else args.mpnet}"
    config = fm.config
    L = config.num_hidden_layers
    progress(f"{name}: building the sub-FM and the emulator")
    models = {
        "fm": fm,
        "sub": build_sub_model(fm, [0, L - 1], args.intermediate_rank),
        "emulator": build_layer_drop_emulator(fm, 1, 1, emulator_middle_layers(L)),
    }
    params = {k: encoder_layer_parameters(m) for k, m in models.items()}
    emulator_layers = models["emulator"].config.num_hidden_layers
    flops = flop_ratios(
        L, config.hidden_size, config.intermediate_size, args.intermediate_rank, 2, args.seq, emulator_layers
    )
    memory = {}
    if not args.no_memory:
        with tempfile.TemporaryDirectory(prefix="fedpft-bench-") as tmp:
            for key, model in models.items():
                progress(f"{name}: peak memory of {MODELS[key]}")
                path = Path(tmp) / key
                if key == "fm":
                    if name == "random":
                        model.save_pretrained(path)
                    else:
                        path = args.mpnet
                    kind = "pretrained"
                else:
                    save_sub_model(model, path)
                    kind = "sub_model"
                spec = {
                    "key": key,
                    "kind": kind,
                    "path": str(path),
                    "family": family,
                    "device": device,
                    "threads": torch.get_num_threads(),
                    "lora_rank": args.lora_rank,
                    "batch": args.batch,
                    "seq": args.seq,
                    "image_size": args.image_size,
                }
                memory[key] = measure_memory(spec)
                if device == "cpu" and glibc() and memory[key]["measure"] == "peak RSS":
                    progress(f"{name}: peak memory of {MODELS[key]}, freed memory returned")
                    memory[key]["returned"] = measure_memory(spec, RETURNED_ENV)
    clients = {k: client_model(k, m, family, args).to(device) for k, m in models.items()}
    batch = batch_for(family, args.batch, args.seq, args.image_size, 2, device)
    times = interleaved_times(clients, batch, args.repeats, device, lambda m: progress(f"{name}: {m}"))
    operators = (
        operator_profile(clients, batch, args.profile_ops, lambda m: progress(f"{name}: {m}"))
        if args.profile_ops
        else None
    )
    # server-side pieces of a round: aggregation of K adapters and the plug-in into the FM
    state = adapter_state(clients["sub"])
    updates = [({k: v + 0.01 * i for k, v in state.items()}, 100, 1) for i in range(args.clients)]
    start = time.perf_counter()
    global_state = aggregate(updates, "weighted", state, 100 * args.clients, 100)
    aggregate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    load_adapter(clients["fm"], global_state)
    plug_seconds = time.perf_counter() - start
    rows = {}
    fm_train = times["fm"]["train_step_seconds"]["median"]
    fm_eval = times["fm"]["eval_forward_seconds"]["median"]
    for key in models:
        row = {
            "model": MODELS[key],
            "encoder_layer_parameters": params[key],
            "layers": models[key].config.num_hidden_layers,
            "flop_ratio_to_fm": flops[key],
            **times[key],
            "train_step_ratio_to_fm": times[key]["train_step_seconds"]["median"] / fm_train,
            "eval_forward_ratio_to_fm": times[key]["eval_forward_seconds"]["median"] / fm_eval,
        }
        if memory:
            row["memory"] = memory[key]
            row["memory_ratio_to_fm"] = memory[key]["peak_bytes"] / memory["fm"]["peak_bytes"]
            if memory[key].get("imports_bytes") and not device.startswith("cuda"):
                mine, fms = memory[key], memory["fm"]
                row["memory_above_runtime_ratio_to_fm"] = (mine["peak_bytes"] - mine["imports_bytes"]) / (
                    fms["peak_bytes"] - fms["imports_bytes"]
                )
            row["parameter_bytes_ratio_to_fm"] = memory[key]["parameter_bytes"] / memory["fm"]["parameter_bytes"]
            if "returned" in memory[key]:
                mine, fms = memory[key]["returned"], memory["fm"]["returned"]
                row["memory_returned_ratio_to_fm"] = mine["peak_bytes"] / fms["peak_bytes"]
                row["memory_returned_above_runtime_ratio_to_fm"] = (mine["peak_bytes"] - mine["imports_bytes"]) / (
                    fms["peak_bytes"] - fms["imports_bytes"]
                )
        rows[key] = row
    sub_ratio = rows["sub"]["train_step_ratio_to_fm"]
    targets = {
        "train_step_ratio_at_most_flop_ratio_plus_0.03": {
            "measured": sub_ratio,
            "bound": flops["sub"] + 0.03,
            "met": sub_ratio <= flops["sub"] + 0.03,
        }
    }
    if memory:
        targets["sub_fm_peak_memory_below_fm"] = {
            "measured": rows["sub"]["memory_ratio_to_fm"],
            "met": rows["sub"]["memory_ratio_to_fm"] < 1.0,
            **(
                {"freed_memory_returned": rows["sub"]["memory_returned_ratio_to_fm"]}
                if "memory_returned_ratio_to_fm" in rows["sub"]
                else {}
            ),
        }
    return {
        "setting": name,
        "source": source,
        "family": family,
        "shape": {
            "layers": L,
            "hidden": config.hidden_size,
            "ffn": config.intermediate_size,
            "intermediate_rank": args.intermediate_rank,
            "emulator_layers": emulator_layers,
            "batch": args.batch,
            "seq": args.seq,
            "lora_rank": args.lora_rank,
        },
        "models": rows,
        "targets": targets,
        "aggregate_seconds": aggregate_seconds,
        "plug_in_seconds": plug_seconds,
        "adapter_bytes": sum(v.numel() * v.element_size() for v in state.values()),
        **({"operators": operators} if operators else {}),
    }


# ------------------------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    lines = [f"**Machine:** {result['machine']}; {result['repeats']} interleaved steps per model after a warm-up."]
    lines.append(f"**FLOP ratio:** {FLOP_FORMULA}.")
    for s in result["settings"]:
        sh = s["shape"]
        lines += [
            "",
            f"**{s['source']}** ({s['family']}; {sh['layers']} layers, hidden {sh['hidden']}, FFN {sh['ffn']} → "
            f"{sh['intermediate_rank']} in {sh['layers'] - 2} layers; emulator {sh['emulator_layers']} layers; "
            f"batch {sh['batch']} × {sh['seq']} tokens; LoRA r={sh['lora_rank']})",
            "",
            "| model | encoder-layer params | train step s (min / median / max) | ratio to FM | FLOP ratio | "
            "eval forward s (median) | ratio to FM | peak memory | ratio to FM | peak above the runtime (ratio) | "
            "peak, freed memory returned (ratio) | above the runtime (ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in s["models"].values():
            t, e = row["train_step_seconds"], row["eval_forward_seconds"]
            mem = row.get("memory")
            mem_cell = f"{mem['peak_bytes'] / 2**20:,.0f} MiB" if mem else "–"
            mem_ratio = f"{row['memory_ratio_to_fm']:.3f}" if mem else "–"
            above = row.get("memory_above_runtime_ratio_to_fm")
            above_cell = (
                f"{(mem['peak_bytes'] - mem['imports_bytes']) / 2**20:,.0f} MiB ({above:.3f})" if above else "–"
            )
            returned = (mem or {}).get("returned")
            returned_cells = (
                f"{returned['peak_bytes'] / 2**20:,.0f} MiB ({row['memory_returned_ratio_to_fm']:.3f}) | "
                f"{(returned['peak_bytes'] - returned['imports_bytes']) / 2**20:,.0f} MiB "
                f"({row['memory_returned_above_runtime_ratio_to_fm']:.3f})"
                if returned
                else "– | –"
            )
            lines.append(
                f"| {row['model']} | {row['encoder_layer_parameters'] / 2**20:.1f} Mi | "
                f"{t['min']:.3f} / {t['median']:.3f} / {t['max']:.3f} | {row['train_step_ratio_to_fm']:.3f} | "
                f"{row['flop_ratio_to_fm']:.3f} | {e['median']:.3f} | {row['eval_forward_ratio_to_fm']:.3f} | "
                f"{mem_cell} | {mem_ratio} | {above_cell} | {returned_cells} |"
            )
        target = s["targets"]["train_step_ratio_at_most_flop_ratio_plus_0.03"]
        lines += [
            "",
            f"Target sub-FM/FM training step ≤ FLOP ratio + 0.03: {target['measured']:.3f} ≤ {target['bound']:.3f} "
            f"— {'met' if target['met'] else 'NOT met'}."
            + (
                f" Peak memory ({s['models']['sub']['memory']['measure']} of one client process over three "
                f"training steps): the sub-FM's is {s['models']['sub']['memory_ratio_to_fm']:.3f} of the FM's; its "
                f"parameters are {s['models']['sub']['parameter_bytes_ratio_to_fm']:.3f} of the FM's."
                if "sub_fm_peak_memory_below_fm" in s["targets"]
                else ""
            )
            + (
                f" With freed memory returned to the system ({' '.join(f'{k}={v}' for k, v in RETURNED_ENV.items())}"
                f" in the memory processes only), the sub-FM's peak is "
                f"{s['models']['sub']['memory_returned_ratio_to_fm']:.3f} of the FM's, "
                f"{s['models']['sub']['memory_returned_above_runtime_ratio_to_fm']:.3f} above the runtime."
                if "memory_returned_ratio_to_fm" in s["models"]["sub"]
                else ""
            )
            + f" Server: aggregating {result['clients']} adapters {s['aggregate_seconds'] * 1e3:.1f} ms, "
            f"plug-in {s['plug_in_seconds'] * 1e3:.1f} ms.",
        ]
        if "operators" in s:
            lines += operator_markdown(s["operators"], s["models"])
    return "\n".join(lines) + "\n"


def operator_markdown(operators: dict, rows: dict, top: int = 8) -> list[str]:
    """The operator profile as two tables: seconds per step by group, then the costliest operators of the FM."""
    groups, per_op = operators["seconds_by_group"], operators["seconds_by_operator"]
    keys = list(groups)
    head = " | ".join(MODELS[k] for k in keys)

    def row(label: str, values: dict) -> str:
        ratio = values["sub"] / values["fm"] if values["fm"] else float("nan")
        return f"| {label} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + f" | {ratio:.3f} |"

    lines = [
        "",
        f"Where a training step goes (torch.profiler, self CPU seconds per step, mean of {operators['steps']} "
        f"profiled steps per model; the sub-FM's FLOP ratio is {rows['sub']['flop_ratio_to_fm']:.3f}):",
        "",
        f"| operator group | {head} | sub-FM / FM |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    lines += [row(name, {k: groups[k][name] for k in keys}) for name, _ in OP_GROUPS]
    lines.append(row("**total**", {k: sum(groups[k].values()) for k in keys}))
    lines += ["", f"| operator (the FM's {top} costliest) | {head} | sub-FM / FM |", "|---|" + "---|" * (len(keys) + 1)]
    for op in sorted(per_op["fm"], key=per_op["fm"].get, reverse=True)[:top]:
        lines.append(row(f"`{op}`", {k: per_op[k].get(op, 0.0) for k in keys}))
    return lines


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores (torch {torch.__version__})"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="roberta", choices=sorted(FAMILIES), help="family of the random-weight FM")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate_rank", type=int, default=768, help="FFN width of the compressed layers")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="tokens per example (text)")
    p.add_argument("--image_size", type=int, default=224, help="(vit)")
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per model, interleaved, after a warm-up")
    p.add_argument("--clients", type=int, default=10, help="adapters aggregated in the server timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--weights",
        choices=("auto", "random", "mpnet", "both"),
        default="auto",
        help="random: the config with random weights; mpnet: real all-mpnet-base-v2 weights (--mpnet); "
        "auto: random, plus mpnet when its folder exists",
    )
    p.add_argument("--mpnet", type=Path, default=MPNET, help="the paper-shape asset (fetch_assets.sh --paper-shape)")
    p.add_argument("--no-memory", dest="no_memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument(
        "--profile-ops",
        dest="profile_ops",
        type=int,
        default=0,
        metavar="N",
        help="also profile N training steps per model with torch.profiler and report self CPU time by operator "
        "(CPU only; 0 = off)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: a MiniLM-sized config (6 layers, hidden 384, FFN 1536 -> 384), 3 repeats, batch 2 x 32 "
        "tokens, random weights only, 1 thread unless --threads says otherwise (numbers not for reporting; about 30 s "
        "on 2 busy cores)",
    )
    p.add_argument("--out", default="benchmarks/client_cost.json", help="JSON; the markdown goes beside it (.md)")
    p.add_argument("--memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch, args.seq, args.image_size = 3, 2, 32, 64
        args.layers, args.hidden, args.ffn, args.intermediate_rank = 6, 384, 1536, 384
        args.threads = args.threads or 1  # tiny steps on cores that other work shares slow down a hundredfold
        if args.weights == "auto":
            args.weights = "random"
    for flag in ("layers", "hidden", "ffn", "heads", "intermediate_rank", "batch", "seq", "lora_rank", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.layers < 3:
        p.error(f"--layers must be at least 3 (two whole layers and one compressed), got {args.layers}")
    if not 1 <= args.intermediate_rank <= args.ffn:
        p.error(f"--intermediate_rank must be in 1..--ffn ({args.ffn}), got {args.intermediate_rank}")
    if args.profile_ops < 0:
        p.error(f"--profile-ops must be at least 0, got {args.profile_ops}")
    if args.profile_ops and args.device != "cpu":
        p.error("--profile-ops reports self CPU time: use it with --device cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here")
    if args.weights == "mpnet" and not (args.mpnet / "config.json").is_file():
        p.error(f"--weights mpnet: {args.mpnet} is missing; install it with bash scripts/fetch_assets.sh --paper-shape")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    settings = {
        "random": ["random"],
        "mpnet": ["mpnet"],
        "both": ["random", "mpnet"],
        "auto": ["random", "mpnet"] if (args.mpnet / "config.json").is_file() else ["random"],
    }[args.weights]
    if args.weights == "auto" and settings == ["random"] and not args.quick:
        print(f"(real weights skipped: {args.mpnet} is missing; bash scripts/fetch_assets.sh --paper-shape)")
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    result = {
        "machine": machine(args.device),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "clients": args.clients,
        "quick": args.quick,
        "flop_formula": FLOP_FORMULA,
        "settings": [run_setting(name, args, args.device, progress) for name in settings],
    }
    result["seconds"] = time.perf_counter() - started
    text = markdown(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"written to {out} and {out.with_suffix('.md')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
