"""One benchmark setting measured side by side: the FM (random weights of a shape from the family table, or real
weights), its sub-FM (layers 0 and L-1 whole, the other FFNs cut by saliency) and its layer-drop emulator, each with
the suite's LoRA: step times, peak memory, FLOP ratios, and the server's part of a round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from federated_proxy_finetuning.adapters import adapter_state, aggregate, load_adapter
from sub_model_construct.emulator import build_layer_drop_emulator
from sub_model_construct.families import FAMILIES, encoder_layers
from sub_model_construct.sub_model import build_sub_model, encoder_layer_parameters
from sub_model_construct.sub_model_io import save_sub_model

from .flops import ffn_share, flop_ratios
from .memory import RETURNED_ENV, glibc, measure_memory
from .models import (
    MODELS,
    batch_for,
    client_model,
    emulator_middle_layers,
    head_name,
    key_width,
    pretrained_fm,
    random_fm,
    vocab_of,
)
from .timing import interleaved_times, operator_profile

ROOT = Path(__file__).resolve().parents[2]


def setting_fm(name: str, args):
    """(FM, its family row, the setting's source in words): random weights of the flags' shape, or the real weights
    of the folder --weights_from (by default --mpnet's)."""
    if name == "random":
        family = FAMILIES[args.family]
        fm = random_fm(
            family, args.layers, args.hidden, args.ffn, args.heads, 2, args.image_size, args.kv_heads, args.vocab
        )
        return fm, family, f"{family.name} config, random weights"
    folder = args.weights_from
    fm, family = pretrained_fm(str(folder), num_labels=2)
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return fm, family, f"real weights: {where}"


def setting_flops(fm, family, args, emulator_layers: int) -> tuple[dict, dict]:
    """(FLOP ratios to the FM, the shape they were computed for): the FM's FFN width, key width and head read from
    its modules and config."""
    shape = {
        "layers": fm.config.num_hidden_layers,
        "hidden": fm.config.hidden_size,
        "ffn": family.ffn.width(encoder_layers(fm, family)[0]),
        "kv_dim": key_width(fm, family),
        "ffn_matrices": len(family.ffn.inputs) + 1,
        "head_width": family.modality.head_width(fm.config),
    }
    common = {"kv_dim": shape["kv_dim"], "ffn_matrices": shape["ffn_matrices"], "vocab": shape["head_width"]}
    L, hidden, ffn = shape["layers"], shape["hidden"], shape["ffn"]
    flops = flop_ratios(L, hidden, ffn, args.intermediate_rank, 2, args.seq, emulator_layers, **common)
    shape["ffn_share_of_fm_flops"] = ffn_share(L, hidden, ffn, args.seq, **common)
    return flops, shape


def run_setting(name: str, args, device: str, progress) -> dict:
    torch.manual_seed(0)
    fm, family, source = setting_fm(name, args)
    L = fm.config.num_hidden_layers
    progress(f"{name}: building the sub-FM and the emulator")
    models = {
        "fm": fm,
        "sub": build_sub_model(fm, [0, L - 1], args.intermediate_rank),
        "emulator": build_layer_drop_emulator(fm, 1, 1, emulator_middle_layers(L, args.emulator_middle)),
    }
    emulator_layers = models["emulator"].config.num_hidden_layers
    flops, flop_shape = setting_flops(fm, family, args, emulator_layers)
    params = {k: encoder_layer_parameters(m) for k, m in models.items()}  # before LoRA goes into them
    memory = {} if args.no_memory else measure_memories(name, args, models, family, device, progress)
    clients = {k: client_model(k, m, family, args.lora_rank).to(device) for k, m in models.items()}
    batch = batch_for(family, args.batch, args.seq, args.image_size, 2, device, vocab_of(fm.config))
    times = interleaved_times(clients, batch, args.repeats, device, lambda m: progress(f"{name}: {m}"))
    operators = (
        operator_profile(clients, batch, args.profile_ops, lambda m: progress(f"{name}: {m}"))
        if args.profile_ops
        else None
    )
    server = server_pieces(clients, args.clients)
    rows = model_rows(models, params, flops, times, memory, device)
    shape = {
        **flop_shape,
        "intermediate_rank": args.intermediate_rank,
        "emulator_layers": emulator_layers,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.lora_rank,
    }
    return {
        "setting": name,
        "source": source,
        "family": family.name,
        "shape": shape,
        "models": rows,
        "targets": setting_targets(rows, flops, memory),
        **server,
        **({"operators": operators} if operators else {}),
    }


def measure_memories(name: str, args, models: dict, family, device: str, progress) -> dict:
    """The peak memory of each model's client process (and, on CPU with glibc, with freed memory returned)."""
    memory = {}
    with tempfile.TemporaryDirectory(prefix="fedpft-bench-") as tmp:
        for key, model in models.items():
            progress(f"{name}: peak memory of {MODELS[key]}")
            path = Path(tmp) / key
            if key == "fm":
                if name == "random":
                    model.save_pretrained(path)
                else:
                    path = args.weights_from
                kind = "pretrained"
            else:
                save_sub_model(model, path)
                kind = "sub_model"
            spec = {
                "key": key,
                "kind": kind,
                "path": str(path),
                "family": family.name,
                "head": head_name(family),
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
    return memory


def server_pieces(clients: dict, count: int) -> dict:
    """The server's part of a round: aggregation of `count` adapters and the plug-in into the FM, timed."""
    state = adapter_state(clients["sub"])
    updates = [({k: v + 0.01 * i for k, v in state.items()}, 100, 1) for i in range(count)]
    start = time.perf_counter()
    global_state = aggregate(updates, "weighted", state, 100 * count, 100)
    aggregate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    load_adapter(clients["fm"], global_state)
    plug_seconds = time.perf_counter() - start
    return {
        "aggregate_seconds": aggregate_seconds,
        "plug_in_seconds": plug_seconds,
        "adapter_bytes": sum(v.numel() * v.element_size() for v in state.values()),
    }


def model_rows(models: dict, params: dict, flops: dict, times: dict, memory: dict, device: str) -> dict:
    """One row per model: its size, FLOP ratio, times and memory, and their ratios to the FM's."""
    fm_train = times["fm"]["train_step_seconds"]["median"]
    fm_eval = times["fm"]["eval_forward_seconds"]["median"]
    rows = {}
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
            row.update(memory_ratios(memory[key], memory["fm"], device))
        rows[key] = row
    return rows


def above_runtime(mine: dict, fms: dict) -> float:
    """A peak above the runtime (the memory before any model existed) as a ratio to the FM's."""
    return (mine["peak_bytes"] - mine["imports_bytes"]) / (fms["peak_bytes"] - fms["imports_bytes"])


def memory_ratios(mine: dict, fms: dict, device: str) -> dict:
    """A model's memory and its ratios to the FM's: peak, peak above the runtime, parameters, and with freed memory
    returned to the system where that was measured."""
    row = {"memory": mine, "memory_ratio_to_fm": mine["peak_bytes"] / fms["peak_bytes"]}
    if mine.get("imports_bytes") and not device.startswith("cuda"):
        row["memory_above_runtime_ratio_to_fm"] = above_runtime(mine, fms)
    row["parameter_bytes_ratio_to_fm"] = mine["parameter_bytes"] / fms["parameter_bytes"]
    if "returned" in mine:
        row["memory_returned_ratio_to_fm"] = mine["returned"]["peak_bytes"] / fms["returned"]["peak_bytes"]
        row["memory_returned_above_runtime_ratio_to_fm"] = above_runtime(mine["returned"], fms["returned"])
    return row


def setting_targets(rows: dict, flops: dict, memory: dict) -> dict:
    """The sub-FM against its targets: training-step ratio at most the FLOP ratio + 0.03; peak memory below the FM's."""
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
    return targets
