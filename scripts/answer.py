"""Greedy answers of a causal-LM FM before and after federated tuning: the untuned FM, and the FM with a run's global
adapter plugged in (a round checkpoint, loaded with stock PEFT), side by side for the same instructions.

    python scripts/answer.py --model_checkpoint pretrain_models/SmolLM2-135M-Instruct \
        --adapter <run folder>/server/checkpoint-round10 --from_task datasets/wiki-qa --count 3
    python scripts/answer.py --model_checkpoint ... --adapter ... --instruction "What is Gulf of St. Lawrence?"

`--adapter` takes a round checkpoint or a run folder (its latest round checkpoint). `--from_task` takes the first
`--count` validation instructions of a wiki-qa-shaped dataset folder, with their reference answers. The prompt is
the model's own chat template, as in training (lm_tasks.chat_prompt_ids). Prints one block per instruction, or JSON
with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def latest_checkpoint(path: Path) -> Path:
    """`path` itself when it holds an adapter, else the highest-numbered server/checkpoint-round* below it."""
    if (path / "adapter_config.json").is_file():
        return path
    found = [(int(m.group(1)), p) for p in path.glob("server/checkpoint-round*") if (m := re.search(r"(\d+)$", p.name))]
    found = [(r, p) for r, p in found if (p / "adapter_config.json").is_file()]
    if not found:
        raise SystemExit(f"error: {path} holds no adapter and no server/checkpoint-round* with one")
    return max(found)[1]


def instructions_of(args) -> list[tuple[str, str | None]]:
    """(instruction, reference answer or None) pairs from the command line and/or a task's validation split."""
    pairs = [(text, None) for text in args.instruction]
    if args.from_task:
        import datasets

        folder = Path(args.from_task)
        if not (folder / "dataset_dict.json").is_file():
            raise SystemExit(f"error: {folder} is not a saved dataset folder (build it with scripts/prepare_assets.py)")
        validation = datasets.load_from_disk(str(folder))["validation"]
        rows = validation.select(range(min(args.count, len(validation))))
        pairs += [(r["instruction"], r["response"]) for r in rows]
    if not pairs:
        raise SystemExit("error: give --instruction TEXT and/or --from_task FOLDER")
    return pairs


def greedy(model, tokenizer, instruction: str, max_new_tokens: int) -> str:
    import torch

    from federated_proxy_finetuning.lm_tasks import chat_prompt_ids

    ids = torch.tensor([chat_prompt_ids(tokenizer, instruction)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_checkpoint", required=True, help="the FM (a causal LM folder)")
    parser.add_argument("--adapter", required=True, help="a round checkpoint or a run folder")
    parser.add_argument("--instruction", action="append", default=[], help="an instruction (repeatable)")
    parser.add_argument("--from_task", help="a wiki-qa-shaped dataset folder: its first --count validation records")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text blocks")
    args = parser.parse_args(argv)
    if args.count < 1 or args.max_new_tokens < 1:
        raise SystemExit("error: --count and --max_new_tokens must be at least 1")
    if not (Path(args.model_checkpoint) / "config.json").is_file():
        raise SystemExit(f"error: {args.model_checkpoint} is not a model folder (no config.json)")
    checkpoint = latest_checkpoint(Path(args.adapter))
    pairs = instructions_of(args)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_checkpoint)
    fm = AutoModelForCausalLM.from_pretrained(args.model_checkpoint).eval()
    before = [greedy(fm, tokenizer, text, args.max_new_tokens) for text, _ in pairs]
    tuned = PeftModel.from_pretrained(fm, str(checkpoint)).eval()
    after = [greedy(tuned, tokenizer, text, args.max_new_tokens) for text, _ in pairs]
    rows = [
        {"instruction": text, "reference": ref, "untuned": b, "tuned": a}
        for (text, ref), b, a in zip(pairs, before, after)
    ]
    if args.json:
        print(json.dumps({"adapter": str(checkpoint), "answers": rows}, indent=1))
    else:
        print(f"adapter: {checkpoint}")
        for row in rows:
            print(f"\n> {row['instruction']}")
            if row["reference"] is not None:
                print(f"  reference: {row['reference']}")
            print(f"  untuned FM: {row['untuned']}")
            print(f"  tuned FM:   {row['tuned']}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
