"""FedPFT on a decoder LM end to end: a tiny LLaMA FM, its sub-FM, the wiki-qa task shape and the public corpus,
through fedtune.py's text command line (rounds, an alignment with the gated-FFN threshold, plug-in evaluation of
the FM with answer loss, perplexity and topic accuracy, a stock PEFT checkpoint, resume)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from sub_model_construct.sub_model import build_sub_model
from sub_model_construct.sub_model_io import save_sub_model
from tests import tiny
from tests.test_lm_tasks import MINILM, RECORDS, TEMPLATE, write_qa

ROOT = Path(__file__).resolve().parents[1]
FEDTUNE = ROOT / "federated_proxy_finetuning" / "fedtune.py"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny LLaMA FM (the MiniLM tokenizer with a chat template), its sub-FM (layers 0 and 3 whole, FFN 64 -> 16),
    a wiki-qa-shaped task and a public text corpus."""
    return make_assets(tmp_path_factory.mktemp("causal"), tied=True)


@pytest.fixture(scope="module")
def untied_assets(tmp_path_factory) -> Path:
    """The same with an output projection of its own (not tied to the input embeddings), as Mistral's."""
    return make_assets(tmp_path_factory.mktemp("causal-untied"), tied=False)


def make_assets(root: Path, tied: bool) -> Path:
    if not (MINILM / "tokenizer_config.json").exists():
        pytest.skip("pretrain_models/all-MiniLM-L6-v2 not fetched (bash scripts/fetch_assets.sh)")
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    tokenizer.chat_template, tokenizer.eos_token = TEMPLATE, "[SEP]"
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=4, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    fm = AutoModelForCausalLM.from_config(config)
    fm.save_pretrained(root / "fm")
    tokenizer.save_pretrained(root / "fm")
    save_sub_model(build_sub_model(fm.model, [0, 3], 16), root / "sub")
    write_qa(root / "data")
    tiny.write_text_corpus(root / "corpus.txt")
    return root


def fedtune_flags(root: Path, out: str, *extra: str) -> list[str]:
    return [
        *("--model_checkpoint", str(root / "fm"), "--task_name", "wiki-qa", "--dataset_path", str(root / "data")),
        *("--method", "pft", "--sub_model_checkpoint", str(root / "sub"), "--align_interval", "2"),
        *("--num_clients", "2", "--proportion", "1.0", "--num_rounds", "3", "--max_length", "96"),
        *("--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--lora_rank", "4"),
        *("--learning_rate", "5e-3", "--seed", "3", "--output_root", str(root / out)),
        *("--task_root", str(root / "task"), "--cache_dir", str(root / "cache")),
        *tiny.align_flags(root / "corpus.txt"),
        *extra,
    ]


def fedtune(root: Path, out: str, *extra: str, launcher: tuple[str, ...] = (sys.executable,)):
    return subprocess.run(
        [*launcher, str(FEDTUNE), *fedtune_flags(root, out, *extra)],
        capture_output=True, text=True, env=tiny.subprocess_env(), timeout=600,
    )  # fmt: skip


def metrics(root: Path, out: str) -> list[dict]:
    (path,) = (root / out).glob("*/*/*/metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fedpft_fine_tunes_a_causal_lm_and_evaluates_the_plugged_in_fm(assets):
    done = fedtune(assets, "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoder-layer parameters" in done.stderr and "encoder-layer" not in done.stderr
    records = metrics(assets, "run")
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["aligned"] for r in records] == [False, False, True, False]
    for r in records:
        fm = r["fm"]
        assert fm["eval_perplexity"] == pytest.approx(2.718281828 ** fm["eval_loss"], rel=1e-6)
        assert 0.0 <= fm["eval_topic_accuracy"] <= 1.0
        assert sum(map(sum, fm["eval_confusion"])) == len(RECORDS["validation"])
    assert records[3]["fm"]["eval_loss"] < records[0]["fm"]["eval_loss"]  # the answers became likelier
    # the round-2 alignment counted inactive positions of the gated FFNs by the threshold, and moved neurons
    assert records[2]["align"]["steps"] > 0
    # the adapter: LoRA on the attention only, no head (the tied LM head is frozen and never shipped)
    (summary_path,) = (assets / "run").glob("*/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["metric_for_best_model"] == "topic_accuracy"
    (checkpoint,) = (assets / "run").glob("*/*/*/server/checkpoint-round3")
    from safetensors.torch import load_file

    keys = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert keys and all("lora_" in k and "self_attn" in k for k in keys)
    bytes_per_client = sum(t.numel() * t.element_size() for t in keys.values())
    assert records[1]["bytes_received"] == 2 * bytes_per_client
    # the plug-in: the stock PEFT loader puts the checkpoint into the FM and gives the recorded loss's model
    from peft import PeftModel

    plugged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets / "fm"), str(checkpoint))
    assert sum("lora_" in n for n, _ in plugged.named_parameters()) == len(keys)


def test_a_stopped_causal_lm_run_resumes_to_the_same_numbers(assets):
    assert fedtune(assets, "whole").returncode == 0
    stopped = fedtune(assets, "parts", "--stop_after_round", "2")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    resumed = fedtune(assets, "parts", "--resume", "True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, parts = metrics(assets, "whole"), metrics(assets, "parts")
    assert [r["fm"]["eval_loss"] for r in whole] == [r["fm"]["eval_loss"] for r in parts]


def test_a_classification_task_on_a_causal_lm_is_refused_in_one_line(assets, tmp_path):
    done = fedtune(assets, "refused", "--task_name", "bbc", "--dataset_path", str(tmp_path))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "bbc is a classification task for an encoder FM" in lines[0]
    assert not (assets / "refused").exists()


def test_an_instruction_task_on_an_encoder_is_refused(tmp_path):
    from federated_proxy_finetuning.tasks import TaskError, load_text_task

    with pytest.raises(TaskError, match="wiki-qa is an instruction task for a causal-LM FM"):
        load_text_task("wiki-qa", str(tmp_path), tokenizer=None)


def test_two_processes_match_one(assets):
    """Clients spread over 2 gloo processes with the same effective batch give the 1-process numbers."""
    one = fedtune(assets, "one", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                  "--align_batch_size", "8")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29541")  # fmt: skip
    two = fedtune(assets, "two", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
                  "--align_batch_size", "4", launcher=launcher)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = metrics(assets, "one"), metrics(assets, "two")
    assert [r["round"] for r in a] == [r["round"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["fm"]["eval_loss"] == pytest.approx(rb["fm"]["eval_loss"], rel=1e-4, abs=1e-5)
        assert ra["fm"]["eval_topic_accuracy"] == rb["fm"]["eval_topic_accuracy"]
        assert ra.get("clients") == rb.get("clients")


def test_a_flower_deployment_gives_the_simulations_numbers(untied_assets):
    """A SuperLink and 2 SuperNodes as separate processes, each SuperNode sent the tiny LLaMA sub-FM at first contact
    with its untied output projection (the FM's, which a node lacks; a tied one travels with the embeddings): the
    same numbers as fedtune.py's simulation."""
    assets = untied_assets
    pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install -e '.[flower]')")
    from tests.test_flower import _free_port_block

    simulated = fedtune(assets, "sim")
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    env = {**tiny.subprocess_env(), "PY": sys.executable, "FLOWER_WORK": str(assets / "flower-work")}
    flags = fedtune_flags(assets, "flower")
    command = ["bash", str(ROOT / "scripts" / "flower_local.sh"), "--supernodes", "2", "--engine", "deployment"]
    command += ["--base-port", str(_free_port_block()), "--", *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    logs = "".join(p.read_text()[-1500:] for p in (assets / "flower-work").glob("*.log"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs
    a, b = metrics(assets, "sim"), metrics(assets, "flower")
    assert [r["round"] for r in b] == [0, 1, 2, 3] and [r["aligned"] for r in b] == [False, False, True, False]
    for ra, rb in zip(a, b):
        assert ra["fm"]["eval_loss"] == pytest.approx(rb["fm"]["eval_loss"], rel=1e-5)
        assert ra["fm"]["eval_topic_accuracy"] == rb["fm"]["eval_topic_accuracy"]
        if ra["round"]:
            assert (ra["bytes_sent"], ra["bytes_received"]) == (rb["bytes_sent"], rb["bytes_received"])


@pytest.mark.parametrize("method", ["fedot", "peft"])
def test_the_baselines_run_on_a_causal_lm(assets, method):
    """FedOT on a layer-drop emulator (layers 0 and 3 kept as adapters, 1 of the 2 middle layers emulated) and
    FedPETuning (LoRA on the full FM) through the same code: rounds, plug-in evaluation, honest bytes."""
    from sub_model_construct.emulator import build_layer_drop_emulator

    extra = ["--method", method]
    if method == "fedot":
        emulator = build_layer_drop_emulator(AutoModelForCausalLM.from_pretrained(assets / "fm"), 1, 1, 1)
        save_sub_model(emulator, assets / "emulator")
        extra += ["--sub_model_checkpoint", str(assets / "emulator")]
    done = fedtune(assets, method, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(assets, method)
    assert [r["round"] for r in records] == [0, 1, 2, 3] and not any(r["aligned"] for r in records)
    assert records[3]["fm"]["eval_loss"] < records[0]["fm"]["eval_loss"]
    (checkpoint,) = (assets / method).glob("*/*/*/server/checkpoint-round3")
    from safetensors.torch import load_file

    keys = load_file(str(checkpoint / "adapter_model.safetensors"))
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in keys}
    # FedOT tunes the adapter layers only (FM layers 0 and 3); FedPETuning every layer
    assert layers == ({0, 3} if method == "fedot" else {0, 1, 2, 3})
    assert records[1]["bytes_received"] == 2 * sum(t.numel() * t.element_size() for t in keys.values())


def test_lora_on_the_ffn_plugs_into_the_kept_neurons(assets, tmp_path):
    """--lora_ffn: LoRA also on gate/up/down. On the sub-FM's cut layers (1 and 2: 16 of 64 neurons) the clients
    train the kept neurons' rows and columns only; the FM-shaped global adapter holds zeros at every other neuron,
    so the plugged-in adapter changes exactly the neurons the clients trained, and the bytes are the client's."""
    from safetensors.torch import load_file

    done = fedtune(assets, "ffn", "--lora_ffn", "True")
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(assets, "ffn")
    assert records[3]["fm"]["eval_loss"] < records[0]["fm"]["eval_loss"]
    (checkpoint,) = (assets / "ffn").glob("*/*/*/server/checkpoint-round3")
    assert checkpoint.parent.parent.name.endswith("-loraffn-seed3")  # not the attention-only run's folder
    state = load_file(str(checkpoint / "adapter_model.safetensors"))
    kept = json.loads((assets / "sub" / "config.json").read_text())["ffn_neurons"]
    assert sorted(kept) == ["1", "2"] and all(len(v) == 16 for v in kept.values())
    dropped_entries = 0
    for layer in range(4):
        key = f"model.layers.{layer}.mlp.%s.weight"
        gate, up = (next(v for k, v in state.items() if k.endswith(key % f"{m}_proj.lora_B")) for m in ("gate", "up"))
        down = next(v for k, v in state.items() if k.endswith(key % "down_proj.lora_A"))
        assert gate.shape == up.shape == (64, 4) and down.shape == (4, 64)  # FM shapes
        others = torch.ones(64, dtype=torch.bool)
        if str(layer) in kept:
            others[kept[str(layer)]] = False
            assert not gate[others].any() and not up[others].any() and not down[:, others].any()
            assert gate[~others].any() and down[:, ~others].any()  # the kept neurons were trained
            dropped_entries += 3 * int(others.sum()) * 4
        else:
            assert gate.any() and up.any()  # a whole layer: every neuron
    fm_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert records[1]["bytes_received"] == 2 * (fm_bytes - 4 * dropped_entries)
    from peft import PeftModel

    plugged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets / "fm"), str(checkpoint))
    assert sum("lora_" in n for n, _ in plugged.named_parameters()) == len(state)
    # a sub-FM that records no kept neurons (built before they were recorded) is refused in one line
    old = tmp_path / "old-sub"
    shutil.copytree(assets / "sub", old)
    config = json.loads((old / "config.json").read_text())
    del config["ffn_neurons"]
    (old / "config.json").write_text(json.dumps(config))
    refused = fedtune(assets, "refused-ffn", "--lora_ffn", "True", "--sub_model_checkpoint", str(old))
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(lines) == 1 and "--lora_ffn needs the kept neurons" in lines[0]
    assert not (assets / "refused-ffn").exists()


def test_answers_before_and_after_tuning(assets):
    """scripts/answer.py: the untuned FM's and the tuned FM's greedy answers to a task's validation instructions, the
    tuned one through the run folder's latest checkpoint loaded with stock PEFT."""
    from peft import PeftModel

    from federated_proxy_finetuning.lm_tasks import chat_prompt_ids

    done = fedtune(assets, "answers", "--num_rounds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (assets / "answers").glob("*/*/*")
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "answer.py"), "--model_checkpoint", str(assets / "fm"),
         "--adapter", str(run), "--from_task", str(assets / "data" / "wiki-qa"), "--count", "2",
         "--max_new_tokens", "8", "--json"],
        capture_output=True, text=True, env=tiny.subprocess_env(), timeout=300,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    result = json.loads(shown.stdout)
    assert result["adapter"].endswith("checkpoint-round2")
    rows = result["answers"]
    assert [r["instruction"] for r in rows] == [r[0] for r in RECORDS["validation"][:2]]
    tokenizer = AutoTokenizer.from_pretrained(assets / "fm")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets / "fm"), result["adapter"]).eval()
    for row in rows:
        ids = torch.tensor([chat_prompt_ids(tokenizer, row["instruction"])])
        out = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        assert row["tuned"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "answer.py"), "--model_checkpoint",
                          str(assets / "fm"), "--adapter", str(assets)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "holds no adapter" in bad.stderr
