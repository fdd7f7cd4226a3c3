"""What the causal-LM topic scorer costs: every (article, topic) row run on its own (lm_scoring.dataset_logprobs,
the scorer before shared prompts) against each article's question run once with the names on its KV cache
(lm_scoring.topic_logprobs), side by side in one run on the same articles, model and thread count.

Times the scoring of the topic prompts of --articles seeded validation records of wiki-qa plus the content-free
prior (the topic question with no title), as evaluate_lm runs them, after a warm-up, --repeats times interleaved
(old, new, old, ...), and prints the seconds of each path (min and median), their ratio and the largest difference between the two
paths' log-probabilities.

    python scripts/bench_lm_eval.py                       # SmolLM2-135M-Instruct's real weights, 40 articles
    python scripts/bench_lm_eval.py --weights random      # its shape with random weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOLLM = ROOT / "pretrain_models" / "SmolLM2-135M-Instruct"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SMOLLM), help="model folder (its tokenizer is always used)")
    p.add_argument("--weights", choices=("real", "random"), default="real", help="random: the model's shape only")
    p.add_argument("--dataset_path", default=str(ROOT / "datasets"))
    p.add_argument("--articles", type=int, default=40, help="seeded validation records whose topics are scored")
    p.add_argument("--batch_size", type=int, default=16, help="evaluation batch (rows before, articles now)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--cache_dir", default=None, help="tokenised-data cache (default: tokenise afresh)")
    return p


def load(args):
    """The tokenizer, the model in eval mode and the wiki-qa task cut to --articles validation records."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from federated_proxy_finetuning.lm_tasks import load_lm_task

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.weights == "real":
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=torch.float32)
    task = load_lm_task("wiki-qa", args.dataset_path, tokenizer, args.max_length, args.cache_dir)
    task.subset_eval(lambda count: min(count, args.articles), seed=0)
    return model.eval(), task


def timed(score) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = score()
    return time.perf_counter() - started, result


def main() -> None:
    from types import SimpleNamespace

    from federated_proxy_finetuning.lm_scoring import dataset_logprobs, topic_logprobs

    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    model, task = load(args)
    cpu = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    tables = (task.topic_prompts, task.topic_baseline)
    paths = {
        "per row": lambda: [dataset_logprobs(model, t, task.collate_fn, args.batch_size, cpu)[0] for t in tables],
        "shared prompt": lambda: [topic_logprobs(model, t, task.collate_fn, args.batch_size, cpu) for t in tables],
    }
    for score in (dataset_logprobs, topic_logprobs):  # a warm-up: first calls pay one-time costs
        score(model, task.topic_baseline, task.collate_fn, args.batch_size, cpu)
    seconds, scores = {name: [] for name in paths}, {}
    for _ in range(args.repeats):
        for name, score in paths.items():
            took, scores[name] = timed(score)
            seconds[name].append(took)
    difference = max(float(abs(a - b).max()) for a, b in zip(scores["per row"], scores["shared prompt"]))
    old, new = (statistics.median(seconds[name]) for name in paths)
    report = {
        "model": f"{Path(args.model).name} ({args.weights} weights)",
        "articles": len(task.eval_splits[""]),
        "rows": len(task.topic_prompts) + len(task.topic_baseline),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": {name: {"min": min(s), "median": statistics.median(s)} for name, s in seconds.items()},
        "speed_up": old / new,
        "max_abs_logprob_difference": difference,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
