"""The benchmark's markdown: per setting a table of the three models, the sub-FM against its targets and the
server's part of a round, and with an operator profile where a training step goes."""

from __future__ import annotations

import os
import platform

import torch

from .flops import FLOP_FORMULA
from .memory import RETURNED_ENV
from .models import MODELS
from .timing import OP_GROUPS


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores (torch {torch.__version__})"


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
            flop_shape_text(sh),
            "",
            "| model | encoder-layer params | train step s (min / median / max) | ratio to FM | FLOP ratio | "
            "eval forward s (median) | ratio to FM | peak memory | ratio to FM | peak above the runtime (ratio) | "
            "peak, freed memory returned (ratio) | above the runtime (ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [model_line(row) for row in s["models"].values()]
        lines += ["", target_text(s, result["clients"])]
        if "operators" in s:
            lines += operator_markdown(s["operators"], s["models"])
    return "\n".join(lines) + "\n"


def flop_shape_text(sh: dict) -> str:
    """The sentence above a setting's table: what its FLOP ratios count and the FFNs' share of the FM's FLOPs."""
    head = f", an LM head over {sh['head_width']:,} tokens" if sh["head_width"] else ""
    return (
        f"FLOPs counted with d_kv = {sh['kv_dim']}, m = {sh['ffn_matrices']} FFN matrices per neuron{head}: the FFNs "
        f"are **{sh['ffn_share_of_fm_flops']:.1%}** of the FM's forward FLOPs, the most an FFN cut can remove."
    )


def model_line(row: dict) -> str:
    """One model's row of a setting's table."""
    t, e = row["train_step_seconds"], row["eval_forward_seconds"]
    mem = row.get("memory")
    mem_cell = f"{mem['peak_bytes'] / 2**20:,.0f} MiB" if mem else "–"
    mem_ratio = f"{row['memory_ratio_to_fm']:.3f}" if mem else "–"
    above = row.get("memory_above_runtime_ratio_to_fm")
    above_cell = f"{(mem['peak_bytes'] - mem['imports_bytes']) / 2**20:,.0f} MiB ({above:.3f})" if above else "–"
    returned = (mem or {}).get("returned")
    returned_cells = (
        f"{returned['peak_bytes'] / 2**20:,.0f} MiB ({row['memory_returned_ratio_to_fm']:.3f}) | "
        f"{(returned['peak_bytes'] - returned['imports_bytes']) / 2**20:,.0f} MiB "
        f"({row['memory_returned_above_runtime_ratio_to_fm']:.3f})"
        if returned
        else "– | –"
    )
    return (
        f"| {row['model']} | {row['encoder_layer_parameters'] / 2**20:.1f} Mi | "
        f"{t['min']:.3f} / {t['median']:.3f} / {t['max']:.3f} | {row['train_step_ratio_to_fm']:.3f} | "
        f"{row['flop_ratio_to_fm']:.3f} | {e['median']:.3f} | {row['eval_forward_ratio_to_fm']:.3f} | "
        f"{mem_cell} | {mem_ratio} | {above_cell} | {returned_cells} |"
    )


def target_text(s: dict, clients: int) -> str:
    """The sentence under a setting's table: the sub-FM against its targets, and the server's part of a round."""
    target = s["targets"]["train_step_ratio_at_most_flop_ratio_plus_0.03"]
    sub = s["models"]["sub"]
    return (
        f"Target sub-FM/FM training step ≤ FLOP ratio + 0.03: {target['measured']:.3f} ≤ {target['bound']:.3f} "
        f"— {'met' if target['met'] else 'NOT met'}."
        + (
            f" Peak memory ({sub['memory']['measure']} of one client process over three "
            f"training steps): the sub-FM's is {sub['memory_ratio_to_fm']:.3f} of the FM's; its "
            f"parameters are {sub['parameter_bytes_ratio_to_fm']:.3f} of the FM's."
            if "sub_fm_peak_memory_below_fm" in s["targets"]
            else ""
        )
        + (
            f" With freed memory returned to the system ({' '.join(f'{k}={v}' for k, v in RETURNED_ENV.items())}"
            f" in the memory processes only), the sub-FM's peak is "
            f"{sub['memory_returned_ratio_to_fm']:.3f} of the FM's, "
            f"{sub['memory_returned_above_runtime_ratio_to_fm']:.3f} above the runtime."
            if "memory_returned_ratio_to_fm" in sub
            else ""
        )
        + f" Server: aggregating {clients} adapters {s['aggregate_seconds'] * 1e3:.1f} ms, "
        f"plug-in {s['plug_in_seconds'] * 1e3:.1f} ms."
    )


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
