"""Same seed and flags, same numbers: run a fixed set of tiny federated configurations and write their results
(timings stripped) to a JSON, or compare them with an earlier such JSON field by field.

A refactor that should not change behaviour is checked by running this before it (the baseline) and after it:

    python -m scripts.equality_check --out /tmp/baseline.json          # on the untouched code
    python -m scripts.equality_check --compare /tmp/baseline.json      # after the change; exit 1 on any difference

Run it from the repository root (`-m` puts the root on the path, so the tiny models of tests/tiny.py are found).
The configurations are FedPFT with alignment, FedPETuning and FedOT on a tiny BERT, each with 1 and 2 processes,
FedPFT resumed after an interruption, and FedPFT with alignment on a tiny one-channel ViT. Compared are every field
of metrics.jsonl, summary.json and the alignment logs except wall-clock timings and temp paths, plus a digest of
the last round checkpoint's adapter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
FEDTUNE = ROOT / "federated_proxy_finetuning" / "fedtune.py"
FEDTUNE_CV = ROOT / "federated_proxy_finetuning" / "fedtune_cv.py"
TIMING_KEYS = {"seconds", "eval_runtime", "eval_samples_per_second", "round_seconds", "seconds_per_step"}
COMMON = (
    "--num_clients 4 --proportion 0.5 --num_rounds 3 --learning_rate 5e-3 --per_device_train_batch_size 4 "
    "--gradient_accumulation_steps 2 --lora_rank 4 --per_device_eval_batch_size 8 --align_batch_size 4 "
    "--align_epochs 0.5 --align_grad_accum_start 2 --align_grad_accum_min 1 --seed 7"
).split()
PFT = ["--method", "pft", "--align_interval", "2"]
# name -> (image task?, processes, method flags, stop-and-resume?)
CONFIGS: dict[str, tuple[bool, int, list[str], bool]] = {
    "pft-align-1proc": (False, 1, PFT, False),
    "pft-align-2proc": (False, 2, PFT, False),
    "peft-1proc": (False, 1, ["--method", "peft"], False),
    "peft-2proc": (False, 2, ["--method", "peft"], False),
    "fedot-1proc": (False, 1, ["--method", "fedot", "--emulator_layers", "1"], False),
    "fedot-2proc": (False, 2, ["--method", "fedot", "--emulator_layers", "1"], False),
    "pft-align-resumed-1proc": (False, 1, PFT, True),
    "vit-pft-align-1proc": (True, 1, PFT, False),
}


def build_assets(root: Path) -> None:
    """A tiny BERT and ViT FM with their sub-FMs, a 3-class text task, a 2-class image task and public corpora."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModel

    import datasets
    from sub_model_construct.sub_model import build_sub_model
    from sub_model_construct.sub_model_io import save_sub_model

    for kind, make in (("text", tiny.make_text_fm), ("image", tiny.make_vit_fm)):
        fm = make(root / f"{kind}-fm")
        save_sub_model(build_sub_model(AutoModel.from_pretrained(fm), [0, 3], 16), root / f"{kind}-sub")
    gen = torch.Generator().manual_seed(0)
    topics = [tiny.WORDS[25:31], tiny.WORDS[31:37], tiny.WORDS[43:49]]

    def text_rows(n: int) -> dict:
        texts = [" ".join(topics[i % 3][int(j)] for j in torch.randint(0, 6, (6,), generator=gen)) for i in range(n)]
        return {"text": texts, "label": [i % 3 for i in range(n)]}

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["business", "sport", "tech"])}
    )
    splits = {"train": text_rows(96), "validation": text_rows(30)}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in splits.items()}).save_to_disk(
        str(root / "data" / "bbc")
    )
    tiny.write_text_corpus(root / "corpus.txt", lines=120)
    rng = np.random.default_rng(0)

    def image_rows(n: int) -> datasets.Dataset:
        labels = [i % 2 for i in range(n)]
        images = [Image.fromarray((rng.integers(0, 100, (8, 8)) + 150 * y).astype(np.uint8), mode="L") for y in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}).cast_column("image", datasets.Image())

    datasets.DatasetDict({"train": image_rows(64), "test": image_rows(20)}).save_to_disk(str(root / "images"))
    tiny.write_image_corpus(root / "image-corpus")


def task_flags(root: Path, image: bool) -> list[str]:
    if image:
        return [
            *("--model_checkpoint", str(root / "image-fm")),
            *("--task_name", "images", "--dataset_path", str(root / "images")),
            *("--distill_dataset_path", str(root / "image-corpus")),
        ]
    return [
        *("--model_checkpoint", str(root / "text-fm")),
        *("--task_name", "bbc", "--dataset_path", str(root / "data")),
        *(
            "--distill_dataset1_path",
            str(root / "corpus.txt"),
            "--distill_dataset2_path",
            "",
            "--align_block_size",
            "16",
        ),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, flags: list[str], processes: int, cwd: Path) -> None:
    command = [sys.executable, str(script), *flags]
    if processes > 1:
        command = [
            *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
            *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
            *("--main_process_port", str(free_port()), str(script), *flags),
        ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=tiny.subprocess_env(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def strip(value, root: str):
    """`value` without timing fields, with the temp root replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: strip(v, root) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def adapter_digest(checkpoint: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "adapter_model.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def collect(run: Path, root: str) -> dict:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run / "summary.json").read_text())
    aligns = {p.stem: json.loads(p.read_text()) for p in sorted((run / "align").glob("round*.json"))}
    last = max(run.glob("server/checkpoint-round*"), key=lambda p: int(p.name.removeprefix("checkpoint-round")))
    return {
        "metrics": strip(metrics, root),
        "summary": strip(summary, root),
        "align": strip(aligns, root),
        "last_checkpoint": last.name,
        "last_adapter_sha256": adapter_digest(last),
    }


def run_config(root: Path, name: str) -> dict:
    image, processes, method, resumed = CONFIGS[name]
    cwd = root / "runs" / name
    cwd.mkdir(parents=True)
    flags = [*task_flags(root, image), *COMMON, *method]
    if method == PFT:
        flags += ["--sub_model_checkpoint", str(root / f"{'image' if image else 'text'}-sub")]
    script = FEDTUNE_CV if image else FEDTUNE
    if resumed:
        launch(script, [*flags, "--stop_after_round", "2"], processes, cwd)
        flags += ["--resume", "True"]
    launch(script, flags, processes, cwd)
    (run,) = [p.parent for p in (cwd / "fed-result").glob("*/*/*/summary.json")]
    hardware = json.loads((run / "config.json").read_text()).get("hardware", {})
    print(f"{name}: ran on {hardware.get('device', '?')} ({hardware.get('name', '?')})", flush=True)
    return collect(run, str(root))


def differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = [f"{path}.{k}: only in {'baseline' if k in old else 'new'}" for k in sorted(set(old) ^ set(new))]
        for k in sorted(set(old) & set(new)):
            found += differences(old[k], new[k], f"{path}.{k}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} != {new!r}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the results here")
    p.add_argument("--compare", help="a baseline JSON written by --out: report every differing field")
    p.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configurations only")
    args = p.parse_args(argv)
    if not (args.out or args.compare):
        p.error("give --out, --compare or both")
    names = args.only or list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="equality-") as tmp:
        root = Path(tmp)
        build_assets(root)
        results = {}
        for name in names:
            results[name] = run_config(root, name)
            print(f"ran {name}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        return 0
    baseline = json.loads(Path(args.compare).read_text())
    failed = False
    for name in names:
        found = differences(baseline.get(name), results[name], name) if name in baseline else [f"{name}: no baseline"]
        print(f"{name}: {'all fields equal' if not found else f'{len(found)} differing field(s)'}")
        for line in found[:20]:
            print(f"  {line}")
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
