"""The client-cost benchmark (federated_proxy_finetuning/bench, scripts/benchmark.py): its FLOP arithmetic, its models
from the family table, its report and a run on a tiny config (timings are not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from federated_proxy_finetuning.bench import flops, models, timing
from federated_proxy_finetuning.bench.memory import glibc
from scripts import benchmark


def test_flop_ratio_of_the_paper_shape():
    r = flops.flop_ratios(layers=12, hidden=768, ffn=3072, rank=768, kept=2, seq=128, emulator_layers=7)
    attention = 4 * 768**2 + 2 * 128 * 768
    full = 12 * (attention + 2 * 768 * 3072)
    assert r["sub"] == pytest.approx((12 * attention + 2 * 2 * 768 * 3072 + 10 * 2 * 768 * 768) / full)
    assert round(r["sub"], 3) == 0.595
    assert r["emulator"] == pytest.approx(7 / 12) and r["fm"] == 1.0
    assert flops.ffn_flops_ratio(12, 768, 3072, 768, 2, 128) == r["sub"]


def test_spread_and_bad_flags(capsys):
    assert {k: v for k, v in timing.spread([3.0, 1.0, 2.0]).items() if k != "all"} == {
        "min": 1.0, "median": 2.0, "max": 3.0, "n": 3,
    }  # fmt: skip
    bad = (["--repeats", "0"], ["--intermediate_rank", "4000"], ["--layers", "2"], ["--emulator_middle", "0"])
    for argv in (*bad, ["--layers", "6", "--emulator_middle", "5"]):
        with pytest.raises(SystemExit) as exc:
            benchmark.parse_args(argv)
        assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert models.emulator_middle_layers(30) == 14 and models.emulator_middle_layers(30, 18) == 18  # Table 5's
    with pytest.raises(ValueError, match="emulator_middle"):
        models.emulator_middle_layers(12, 11)  # a real model deeper than --layers says: checked when it is loaded


def test_tiny_run_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = "--layers 3 --hidden 32 --ffn 64 --heads 2 --intermediate_rank 16 --batch 2 --seq 8 --repeats 2"
    assert benchmark.main([*argv.split(), "--weights", "random", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (setting,) = result["settings"]
    models = setting["models"]
    assert list(models) == ["fm", "sub", "emulator"]
    assert models["sub"]["encoder_layer_parameters"] < models["fm"]["encoder_layer_parameters"]
    for row in models.values():
        assert row["train_step_seconds"]["n"] == 2
        assert (
            row["train_step_seconds"]["min"] <= row["train_step_seconds"]["median"] <= row["train_step_seconds"]["max"]
        )
        memory = row["memory"]
        assert memory["peak_bytes"] >= memory["before_bytes"] > 0
        if glibc():  # a second child with freed memory returned
            returned = memory["returned"]
            assert returned["peak_bytes"] >= returned["before_bytes"] > 0
            assert (
                row["memory_returned_ratio_to_fm"]
                == returned["peak_bytes"] / models["fm"]["memory"]["returned"]["peak_bytes"]
            )
    # the sub-FM's parameters are fewer, and the child process saw exactly them (with LoRA and head)
    assert models["sub"]["memory"]["parameter_bytes"] < models["fm"]["memory"]["parameter_bytes"]
    target = setting["targets"]["train_step_ratio_at_most_flop_ratio_plus_0.03"]
    assert target["bound"] == pytest.approx(models["sub"]["flop_ratio_to_fm"] + 0.03)
    text = out.with_suffix(".md").read_text()
    assert text in capsys.readouterr().out
    assert "| sub-FM (FedPFT) |" in text and "Target sub-FM/FM training step" in text
    if glibc():
        assert "freed memory returned (ratio)" in text and "With freed memory returned to the system" in text


def test_operator_profile_groups_every_operator_once(tmp_path):
    out = tmp_path / "ops.json"
    argv = "--layers 3 --hidden 32 --ffn 64 --heads 2 --intermediate_rank 16 --batch 2 --seq 8 --repeats 1"
    argv += " --weights random --threads 1 --no-memory --profile-ops 1"
    assert benchmark.main([*argv.split(), "--out", str(out)]) == 0
    (setting,) = json.loads(out.read_text())["settings"]
    operators = setting["operators"]
    assert operators["steps"] == 1
    for key in ("fm", "sub", "emulator"):
        per_op, groups = operators["seconds_by_operator"][key], operators["seconds_by_group"][key]
        assert list(groups) == [name for name, _ in timing.OP_GROUPS]
        assert sum(groups.values()) == pytest.approx(sum(per_op.values()))
        matmuls = sum(v for op, v in per_op.items() if op in timing.MATMUL_OPS)
        assert groups["matrix products (mm, addmm, bmm)"] == pytest.approx(matmuls) and matmuls > 0
    text = out.with_suffix(".md").read_text()
    assert "| operator group |" in text and "| **total** |" in text


def test_operator_profile_is_cpu_only(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(["--profile-ops", "2", "--device", "cuda"])
    assert exc.value.code == 2 and "--device cpu" in capsys.readouterr().err


def test_random_fm_comes_from_the_family_row():
    from sub_model_construct.families import FAMILIES, encoder_layers

    assert {"roberta", "vit", "llama"} <= set(models.BENCH_FAMILIES)
    vit = models.random_fm(FAMILIES["vit"], 3, 32, 64, 2, num_labels=2, image_size=32)
    assert type(vit).__name__ == "ViTForImageClassification" and vit.config.image_size == 32
    assert [FAMILIES["vit"].ffn.width(layer) for layer in encoder_layers(vit, FAMILIES["vit"])] == [64] * 3
    batch = models.batch_for(FAMILIES["vit"], 2, 8, 32, 2)
    assert vit(**batch).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="does not take this shape"):  # DistilBERT's config ignores intermediate_size
        models.random_fm(FAMILIES["distilbert"], 3, 32, 64, 2, num_labels=2, image_size=224)


def test_tiny_causal_lm_gives_the_gated_flop_ratios(tmp_path):
    """A llama shape with grouped-query attention runs as a causal LM (labels = its token ids) and its FLOP ratios
    are the gated formula's: 3 FFN matrices per neuron, keys and values of width d·kv/heads, an LM head V·d."""
    out = tmp_path / "llm.json"
    argv = "--family llama --layers 4 --hidden 32 --ffn 64 --heads 4 --kv_heads 2 --vocab 100 --intermediate_rank 16"
    argv += " --batch 2 --seq 8 --repeats 1 --weights random --threads 1 --no-memory"
    assert benchmark.main([*argv.split(), "--out", str(out)]) == 0
    (setting,) = json.loads(out.read_text())["settings"]
    shape, rows = setting["shape"], setting["models"]
    assert (shape["kv_dim"], shape["ffn_matrices"], shape["head_width"], shape["emulator_layers"]) == (16, 3, 100, 3)
    # per token: attention 2·32² + 2·32·16 + 2·8·32 = 3584, FFN 3·32·64 = 6144 a layer; LM head 100·32 = 3200
    fm = 4 * (3584 + 6144) + 3200  # 42112
    sub = 4 * 3584 + 2 * 6144 + 2 * 3 * 32 * 16 + 3200  # 32896: two whole FFNs, two cut to 16 neurons
    emulator = 3 * (3584 + 6144) + 3200  # 32384
    assert rows["sub"]["flop_ratio_to_fm"] == pytest.approx(sub / fm)
    assert rows["emulator"]["flop_ratio_to_fm"] == pytest.approx(emulator / fm)
    assert shape["ffn_share_of_fm_flops"] == pytest.approx(4 * 6144 / fm)
    assert rows["sub"]["encoder_layer_parameters"] < rows["fm"]["encoder_layer_parameters"]
    assert "of the FM's forward FLOPs" in out.with_suffix(".md").read_text()


def test_causal_lm_batches_and_models_come_from_the_modality():
    from sub_model_construct.families import FAMILIES

    llama = models.random_fm(FAMILIES["llama"], 3, 32, 64, 4, num_labels=2, image_size=224, kv_heads=2, vocab=100)
    assert type(llama).__name__ == "LlamaForCausalLM" and llama.config.tie_word_embeddings
    assert llama.config.vocab_size == 100 and models.key_width(llama, FAMILIES["llama"]) == 16
    batch = models.batch_for(FAMILIES["llama"], 2, 8, 224, 2, vocab=100)
    assert torch.equal(batch["labels"], batch["input_ids"]) and int(batch["input_ids"].max()) < 100
    assert llama(**batch).logits.shape == (2, 8, 100)
    with pytest.raises(ValueError, match="does not take this shape"):  # an encoder has no grouped-query attention
        models.random_fm(FAMILIES["roberta"], 3, 32, 64, 4, num_labels=2, image_size=224, kv_heads=2)


def test_real_weights_come_from_any_model_folder(tmp_path, capsys):
    """--weights_from takes a causal LM folder (its own head, no labels); --weights mpnet still names that setting."""
    from sub_model_construct.families import FAMILIES

    folder = tmp_path / "lm"
    models.random_fm(
        FAMILIES["qwen2"], 3, 32, 64, 4, num_labels=2, image_size=224, kv_heads=2, vocab=100
    ).save_pretrained(folder)
    out = tmp_path / "real.json"
    argv = "--intermediate_rank 16 --batch 2 --seq 8 --repeats 1 --threads 1 --no-memory --weights mpnet"
    assert benchmark.main([*argv.split(), "--weights_from", str(folder), "--out", str(out)]) == 0
    (setting,) = json.loads(out.read_text())["settings"]
    assert setting["setting"] == "real" and setting["family"] == "qwen2" and str(folder) in setting["source"]
    assert (setting["shape"]["kv_dim"], setting["shape"]["head_width"]) == (16, 100)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--weights", "real", "--weights_from", str(tmp_path / "none")])
    assert "holds no config.json" in capsys.readouterr().err
