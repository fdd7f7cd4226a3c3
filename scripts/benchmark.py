"""What a client pays: the FM, the FedPFT sub-FM and the FedOT emulator measured side by side in one run.

For each setting (a shape from a family's config with random weights, and real weights: all-mpnet-base-v2 when the
paper-shape asset is installed, or any model folder given with --weights_from) it builds the FM, the sub-FM (layers 0 and L-1 whole, the other FFNs cut to
--intermediate_rank by saliency) and the layer-drop emulator, puts the suite's LoRA on each and reports:

- training-step time (forward + backward + AdamW on the LoRA and head), --repeats interleaved steps per model
  after a warm-up (min / median / max), and the eval-forward time likewise;
- the peak memory of one client's training step, each model in a fresh process that loads it the way a client
  does: peak RSS on CPU (sampled every millisecond during three steps), torch.cuda.max_memory_allocated on a GPU;
  on CPU with glibc also the peak RSS with freed memory returned to the system (a second process per model with
  MALLOC_MMAP_THRESHOLD_=131072), which follows what the step holds rather than what glibc keeps for reuse;
- the analytic FLOP ratio to the FM, with its formula, and the FFNs' share of the FM's forward FLOPs;
- the server-side pieces of a round (aggregation of --clients adapters, plug-in into the FM);
- with --profile-ops N, where a training step goes: torch.profiler's self CPU time per operator, grouped into
  matrix products (the only work a cut FFN removes), dropout masks and everything else, per model side by side.

Prints a markdown table per setting and writes JSON (--out) and the markdown beside it (.md).

    python scripts/benchmark.py                       # full: 10 repeats, batch 8 x 128 tokens
    python scripts/benchmark.py --quick               # a smoke run on a small config, under a minute
    python scripts/benchmark.py --device cuda         # on a GPU (memory: CUDA max allocated)
    python scripts/benchmark.py --threads 1 --no-memory --profile-ops 3   # time, then operators of 3 steps each
    python scripts/benchmark.py --family llama --layers 30 --hidden 576 --ffn 1536 --heads 9 --kv_heads 3 \
        --vocab 49152 --emulator_middle 18 --weights random   # a causal LM of SmolLM2-135M's shape (Table 5's emulator)
    python scripts/benchmark.py --weights real --weights_from pretrain_models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from federated_proxy_finetuning.bench.flops import FLOP_FORMULA
from federated_proxy_finetuning.bench.memory import memory_child
from federated_proxy_finetuning.bench.models import BENCH_FAMILIES
from federated_proxy_finetuning.bench.report import machine, markdown
from federated_proxy_finetuning.bench.setting import run_setting

ROOT = Path(__file__).resolve().parents[1]
MPNET = ROOT / "pretrain_models" / "all-mpnet-base-v2"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--family",
        default="roberta",
        choices=BENCH_FAMILIES,
        help="family of the random-weight FM (a decoder family: a causal LM with its embeddings as LM head)",
    )
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument(
        "--kv_heads", type=int, default=None, help="key/value heads (grouped-query attention; default --heads)"
    )
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the config class's)")
    p.add_argument("--intermediate_rank", type=int, default=768, help="FFN width of the compressed layers")
    p.add_argument(
        "--emulator_middle",
        type=int,
        default=None,
        help="middle layers the FedOT emulator keeps (default: half of the FM's; Table 5's SmolLM2 emulator: 18)",
    )
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
        choices=("auto", "random", "real", "mpnet", "both"),
        default="auto",
        help="random: the config with random weights; real (or mpnet): the real weights of --weights_from; "
        "both: the two; auto: random, plus real when its folder exists",
    )
    p.add_argument("--mpnet", type=Path, default=MPNET, help="the paper-shape asset (fetch_assets.sh --paper-shape)")
    p.add_argument(
        "--weights_from",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="the model folder of the real-weights setting, any family of the table (default: --mpnet)",
    )
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
    return p


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch, args.seq, args.image_size = 3, 2, 32, 64
        args.layers, args.hidden, args.ffn, args.intermediate_rank = 6, 384, 1536, 384
        args.threads = args.threads or 1  # tiny steps on cores that other work shares slow down a hundredfold
        if args.weights == "auto":
            args.weights = "random"
    args.kv_heads = args.kv_heads or args.heads
    for flag in ("layers", "hidden", "ffn", "heads", "intermediate_rank", "batch", "seq", "lora_rank", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error(f"--hidden ({args.hidden}) must split into --heads ({args.heads}), and those into --kv_heads")
    if args.vocab is not None and args.vocab < 6:
        p.error(f"--vocab must be at least 6 (token ids 0-4 are left to special tokens), got {args.vocab}")
    if args.layers < 3:
        p.error(f"--layers must be at least 3 (two whole layers and one compressed), got {args.layers}")
    middle = args.emulator_middle
    # a real model's depth is only known once it is loaded: emulator_middle_layers checks the upper bound then
    if middle is not None and (middle < 1 or (args.weights != "real" and middle > args.layers - 2)):
        p.error(f"--emulator_middle must be in 1..--layers - 2 ({args.layers - 2}), got {middle}")
    if not 1 <= args.intermediate_rank <= args.ffn:
        p.error(f"--intermediate_rank must be in 1..--ffn ({args.ffn}), got {args.intermediate_rank}")
    if args.profile_ops < 0:
        p.error(f"--profile-ops must be at least 0, got {args.profile_ops}")
    if args.profile_ops and args.device != "cpu":
        p.error("--profile-ops reports self CPU time: use it with --device cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here")
    args.weights = "real" if args.weights == "mpnet" else args.weights
    args.weights_from = args.weights_from or args.mpnet
    if args.weights == "real" and not (args.weights_from / "config.json").is_file():
        hint = "" if args.weights_from != MPNET else "; install it with bash scripts/fetch_assets.sh --paper-shape"
        p.error(f"--weights real: {args.weights_from} holds no config.json{hint}")
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
        "real": ["real"],
        "both": ["random", "real"],
        "auto": ["random", "real"] if (args.weights_from / "config.json").is_file() else ["random"],
    }[args.weights]
    if args.weights == "auto" and settings == ["random"] and not args.quick:
        print(f"(real weights skipped: {args.weights_from} is missing; bash scripts/fetch_assets.sh --paper-shape)")
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
