"""Print one table from the federated runs under a fed-result folder (reads summary.json and metrics.jsonl).

python scripts/summarize.py fed-result/bbc [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from federated_proxy_finetuning.methods import METHODS


def paper_name(summary: dict) -> str:
    """The paper's name for a run (spec §4.13, methods.Method.paper_name), from its method, alignment and whether its
    client model was distilled; older summaries without those fields keep the method name."""
    method = summary.get("method", "?")
    kind = METHODS.get(method)
    distilled = summary.get("client_model_distilled")
    if kind is None or (distilled is None and kind.client.reads_folder):
        return method
    return kind.paper_name(distilled, summary.get("aligning"))


def rows(root: Path) -> list[dict]:
    found = []
    for summary_path in sorted(root.rglob("summary.json")):
        run = summary_path.parent
        summary = json.loads(summary_path.read_text())
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        trained = [m for m in metrics if m["round"] > 0]
        key = summary.get("metric", "eval_accuracy")
        per_round_bytes = [m["bytes_sent"] + m["bytes_received"] for m in trained]
        seconds = sum(sum(m.get("seconds", {}).values()) for m in trained)
        found.append(
            {
                "method": f"{paper_name(summary)} ({summary.get('method', '?')})",
                "run": f"{run.parent.name}/{run.name}",
                "client_params_mi": summary.get("client_encoder_layer_parameters", 0) / 2**20,
                "fm_params_mi": summary.get("fm_encoder_layer_parameters", 0) / 2**20,
                "final": summary.get("final", {}).get(key),
                "final_round": summary.get("final_round"),
                "best": summary.get("best_metric"),
                "best_round": summary.get("best_round"),
                "final_sub_fm": (summary.get("final_sub_fm") or {}).get(key),
                "bytes_per_round": sum(per_round_bytes) / len(per_round_bytes) if per_round_bytes else 0,
                "seconds": seconds,
                "finished": summary.get("finished"),
            }
        )
    return found


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="a fed-result folder (searched recursively)")
    args = parser.parse_args()
    table = rows(Path(args.root))
    if not table:
        print(f"no summary.json under {args.root}", file=sys.stderr)
        return 1
    head = ("method", "client params", "FM final acc", "FM best acc (round)", "sub-FM final acc", "MB/round", "seconds")
    lines = [head]
    for r in table:
        lines.append(
            (
                r["method"] + ("" if r["finished"] else " (unfinished)"),
                f"{r['client_params_mi']:.1f}Mi of {r['fm_params_mi']:.1f}Mi",
                fmt(r["final"], ".4f"),
                f"{fmt(r['best'], '.4f')} ({r['best_round']})",
                fmt(r["final_sub_fm"], ".4f"),
                f"{r['bytes_per_round'] / 1e6:.2f}",
                f"{r['seconds']:.0f}",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(lines[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
