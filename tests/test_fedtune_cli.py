"""End-to-end runs of fedtune.py on tiny models: results layout, plug-in checkpoint, resume, 1 vs 2 processes,
baselines, and bad input (spec §4, §5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
FEDTUNE = str(ROOT / "federated_proxy_finetuning" / "fedtune.py")
ENV = tiny.subprocess_env()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny BERT FM, its sub-FM, a 3-class headline task in the embedded-task layout and a public corpus."""
    import datasets
    from sub_model_construct.sub_model import build_sub_model
    from sub_model_construct.sub_model_io import save_sub_model

    root = tmp_path_factory.mktemp("fed")
    fm_dir = tiny.make_text_fm(root / "fm", "bert")
    from transformers import AutoModel

    save_sub_model(build_sub_model(AutoModel.from_pretrained(fm_dir), [0, 3], 16), root / "sub")
    gen = torch.Generator().manual_seed(0)
    topics = [tiny.WORDS[25:31], tiny.WORDS[31:37], tiny.WORDS[43:49]]

    def rows(n):
        texts, labels = [], []
        for i in range(n):
            label = i % 3
            words = [topics[label][int(j)] for j in torch.randint(0, 6, (6,), generator=gen)]
            texts.append(" ".join(words))
            labels.append(label)
        return {"text": texts, "label": labels}

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["business", "sport", "tech"])}
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows(96), features=features),
            "validation": datasets.Dataset.from_dict(rows(30), features=features),
        }
    ).save_to_disk(str(root / "data" / "bbc"))
    tiny.write_text_corpus(root / "corpus.txt", lines=120)
    return root


def fedtune(assets: Path, cwd: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    args = [
        "--model_checkpoint",
        str(assets / "fm"),
        "--task_name",
        "bbc",
        "--dataset_path",
        str(assets / "data"),
        "--num_clients",
        "4",
        "--proportion",
        "0.5",
        "--num_rounds",
        "3",
        "--learning_rate",
        "5e-3",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--lora_rank",
        "4",
        *tiny.align_flags(assets / "corpus.txt"),
        "--per_device_eval_batch_size",
        "8",
        *extra,
    ]
    command = (launcher or [sys.executable]) + [FEDTUNE] + args
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)


def run_dir(cwd: Path, method: str) -> Path:
    found = [p for p in (cwd / "fed-result" / "bbc").glob(f"*/{method}-*") if (p / "summary.json").exists()]
    assert len(found) == 1, found
    return found[0]


def metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def pft(*extra: str) -> tuple[str, ...]:
    return ("--method", "pft", "--align_interval", "2", *extra)


def test_pft_run_writes_results_and_a_pluggable_adapter(assets, tmp_path):
    done = fedtune(assets, tmp_path, *pft("--sub_model_checkpoint", str(assets / "sub")))
    assert done.returncode == 0, done.stderr
    run = run_dir(tmp_path, "pft")
    records = metrics(run)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for r in records[1:]:
        assert {"eval_accuracy", "eval_loss"} <= set(r["fm"]) and "eval_accuracy" in r["sub_fm"]
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0
        assert set(r["seconds"]) == {"train", "aggregate", "eval", "align"}
    assert [r["aligned"] for r in records[1:]] == [False, True, False]
    assert (run / "align" / "round2.json").exists()
    # timings.jsonl: every part of each round, including the checkpoint and the writing that follow the record
    timings = [json.loads(x) for x in (run / "timings.jsonl").read_text().splitlines()]
    assert [t["round"] for t in timings] == [0, 1, 2, 3]
    parts = ("train", "aggregate", "eval", "align", "log", "checkpoint")
    for t, r in zip(timings[1:], records[1:]):
        assert set(t) == {"round", *parts, "rest", "total"}
        assert all(t[p] >= 0 for p in parts) and t["checkpoint"] > 0 and t["log"] > 0
        assert {p: t[p] for p in r["seconds"]} == r["seconds"]  # the same clock readings as metrics.jsonl
        assert t["total"] == pytest.approx(sum(t[p] for p in parts) + t["rest"])
        assert 0 <= t["rest"] < 0.5 * t["total"]
    assert timings[0]["eval"] > 0 and timings[0]["train"] == timings[0]["align"] == 0
    # clients of round 3 also receive the FFN weights changed by the round-2 alignment, by hand: the sub-FM keeps
    # layers 0 and 3 whole; layers 1 and 2 have 16 neurons of which p = 0.5 were updated, each an input row (32), its
    # bias (1) and an output column (32), plus each layer's output bias (32) and LayerNorm (64); float32
    adapter = records[1]["bytes_sent"] // len(records[1]["clients"])
    synced = 2 * (8 * (32 + 1 + 32) + 32 + 64) * 4
    assert records[2]["bytes_sent"] == len(records[2]["clients"]) * adapter
    assert records[3]["bytes_sent"] == len(records[3]["clients"]) * (adapter + synced)
    for before, r in zip(records, records[1:]):
        assert r["bytes_sent_cumulative"] == before["bytes_sent_cumulative"] + r["bytes_sent"]
        assert r["bytes_received_cumulative"] == before["bytes_received_cumulative"] + r["bytes_received"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["final_round"] == 3
    sent = summary["communication"]
    assert sent["bytes_sent"] == records[3]["bytes_sent_cumulative"] and sent["sub_fm_version"] == 1
    assert sent["model_shipping_bytes"] == 4 * sent["client_model_bytes"] > 0  # the sub-FM to each of 4 clients
    assert summary["aligning"] and summary["client_model_distilled"] is False
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["method"] == "pft" and config["environment"]["packages"]["torch"]
    assert config["hardware"]["device"] == "cpu" and config["hardware"]["processes"] == 1
    # the round checkpoint is a stock PEFT adapter for the FM: loaded with PeftModel.from_pretrained, the FM scores
    # what metrics.jsonl logged for that round
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import datasets

    fm = AutoModelForSequenceClassification.from_pretrained(assets / "fm", num_labels=3)
    plugged = PeftModel.from_pretrained(fm, run / "server" / "checkpoint-round3").eval()
    assert any("lora_A" in n for n, _ in plugged.named_parameters())
    validation = datasets.load_from_disk(str(assets / "data" / "bbc"))["validation"]
    tokenizer = AutoTokenizer.from_pretrained(assets / "fm")
    batch = tokenizer(list(validation["text"]), truncation=True, max_length=512, padding=True, return_tensors="pt")
    labels = torch.tensor(validation["label"])
    with torch.no_grad():
        out = plugged(**batch, labels=labels)
    logged = records[3]["fm"]
    assert (out.logits.argmax(-1) == labels).float().mean().item() == pytest.approx(logged["eval_accuracy"])
    assert out.loss.item() == pytest.approx(logged["eval_loss"], rel=1e-5)
    # what it predicted: the confusion matrix, rows true labels and columns predictions, as counted here
    expected = [[0] * 3 for _ in range(3)]
    for y, prediction in zip(labels.tolist(), out.logits.argmax(-1).tolist()):
        expected[y][prediction] += 1
    assert logged["eval_confusion"] == expected and all("eval_confusion" in r["sub_fm"] for r in records[1:])
    # the best round is a trained one, even where the untrained FM of round 0 scored higher
    best = max(records[1:], key=lambda r: (r["fm"]["eval_accuracy"], -r["round"]))
    assert (summary["best_round"], summary["best_metric"]) == (best["round"], best["fm"]["eval_accuracy"])
    assert out.loss.item() != pytest.approx(records[2]["fm"]["eval_loss"], rel=1e-5)  # round 3's adapter, not older


def test_resume_gives_the_uninterrupted_metrics(assets, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    args = pft("--sub_model_checkpoint", str(assets / "sub"), "--num_rounds", "4")
    assert fedtune(assets, whole, *args).returncode == 0
    first = fedtune(assets, parts, *args, "--stop_after_round", "2")
    assert first.returncode == 0, first.stderr
    assert [r["round"] for r in metrics(run_dir(parts, "pft"))] == [0, 1, 2]
    refused = fedtune(assets, parts, *args)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    resumed = fedtune(assets, parts, *args, "--resume", "auto")  # a checkpoint: resumed
    assert resumed.returncode == 0, resumed.stderr
    a, b = metrics(run_dir(whole, "pft")), metrics(run_dir(parts, "pft"))
    assert [r["round"] for r in b] == [0, 1, 2, 3, 4]
    timings = [json.loads(x) for x in (run_dir(parts, "pft") / "timings.jsonl").read_text().splitlines()]
    assert [t["round"] for t in timings] == [0, 1, 2, 3, 4]  # continued from the checkpoint's round, like metrics
    for ra, rb in zip(a, b):
        assert ra["fm"]["eval_loss"] == pytest.approx(rb["fm"]["eval_loss"], abs=1e-6)
        assert ra["fm"]["eval_accuracy"] == rb["fm"]["eval_accuracy"]
        # the clients' sub-FM versions survive the checkpoint: the same bytes are charged
        assert (ra["bytes_sent"], ra["bytes_received_cumulative"]) == (
            rb["bytes_sent"],
            rb["bytes_received_cumulative"],
        )
    before = (run_dir(parts, "pft") / "metrics.jsonl").read_text()
    skipped = fedtune(assets, parts, *args, "--resume", "auto")  # finished: skipped, nothing rewritten
    assert skipped.returncode == 0 and "skipped" in skipped.stdout, skipped.stderr
    assert (run_dir(parts, "pft") / "metrics.jsonl").read_text() == before
    fresh = tmp_path / "fresh"
    (fresh / run_dir(parts, "pft").relative_to(parts)).mkdir(parents=True)  # a folder without a checkpoint
    started = fedtune(assets, fresh, *args, "--resume", "auto", "--num_rounds", "4")
    assert started.returncode == 0, started.stderr
    assert [r["round"] for r in metrics(run_dir(fresh, "pft"))] == [0, 1, 2, 3, 4]
    # evaluating less often, and not the untrained model, changes no evaluated number
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    done = fedtune(assets, sparse, *args, "--eval_interval", "2", "--eval_round_zero", "False")
    assert done.returncode == 0, done.stderr
    c = metrics(run_dir(sparse, "pft"))
    assert [r["round"] for r in c] == [0, 1, 2, 3, 4] and [r["round"] for r in c if "fm" in r] == [2, 4]
    for ra, rc in zip(a, c):
        assert ra.get("clients") == rc.get("clients")
        if "fm" in rc:
            assert ra["fm"]["eval_loss"] == pytest.approx(rc["fm"]["eval_loss"], abs=1e-6)
    summary = json.loads((run_dir(sparse, "pft") / "summary.json").read_text())
    assert summary["final_round"] == 4 and summary["best_round"] in (2, 4)


def test_max_eval_samples_is_a_seeded_random_subset():
    import datasets
    from federated_proxy_finetuning.tasks import seeded_rows

    def seeded_subset(dataset, count: int, seed: int):  # what TaskData.subset_eval keeps of an eval split
        return dataset.select(seeded_rows(len(dataset), count, seed))

    ordered = datasets.Dataset.from_dict({"label": [0] * 50 + [1] * 50, "row": list(range(100))})  # label-grouped
    first = seeded_subset(ordered, 20, seed=1)
    rows = list(first["row"])
    assert len(rows) == 20 and set(first["label"]) == {0, 1}
    assert rows == sorted(rows) and rows != list(range(20))  # a random subset in the original order
    assert list(seeded_subset(ordered, 20, seed=1)["row"]) == rows  # seeded
    assert list(seeded_subset(ordered, 20, seed=2)["row"]) != rows


def test_two_processes_match_one(assets, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    common = pft("--sub_model_checkpoint", str(assets / "sub"), "--per_device_train_batch_size", "4")
    single = fedtune(assets, one, *common, "--gradient_accumulation_steps", "2", "--align_batch_size", "8")
    assert single.returncode == 0, single.stderr
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
    ]
    double = fedtune(
        assets, two, *common, "--gradient_accumulation_steps", "1", "--align_batch_size", "4", launcher=launcher
    )
    assert double.returncode == 0, double.stderr
    a, b = metrics(run_dir(one, "pft")), metrics(run_dir(two, "pft"))
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert ra["fm"]["eval_loss"] == pytest.approx(rb["fm"]["eval_loss"], rel=1e-4, abs=1e-5)
        assert ra["fm"]["eval_accuracy"] == pytest.approx(rb["fm"]["eval_accuracy"], abs=1 / 30 + 1e-9)
        assert ra.get("clients") == rb.get("clients")


@pytest.mark.parametrize("method", ["peft", "fedot"])
def test_baselines_run(assets, tmp_path, method):
    extra = ("--emulator_layers", "1") if method == "fedot" else ()
    done = fedtune(assets, tmp_path, "--method", method, "--num_rounds", "2", *extra)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir(tmp_path, method) / "summary.json").read_text())
    if method == "fedot":  # 3 of 4 layers kept whole
        assert summary["client_encoder_layer_parameters"] == pytest.approx(
            summary["fm_encoder_layer_parameters"] * 3 / 4
        )
    else:
        assert summary["client_encoder_layer_parameters"] == summary["fm_encoder_layer_parameters"]


def refused(assets: Path, cwd: Path, *extra: str) -> str:
    done = fedtune(assets, cwd, *extra)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(("error:", "usage:")) or "error:" in lines[-1], done.stderr
    assert not (cwd / "fed-result").exists() and not (cwd / "task").exists(), "a refused run must write nothing"
    return lines[-1]


def test_bad_input_is_refused_with_one_line_and_nothing_written(assets, tmp_path):
    other_fm = tiny.make_text_fm(tmp_path / "other", "bert", layers=2)
    from transformers import AutoModel

    from sub_model_construct.sub_model import build_sub_model
    from sub_model_construct.sub_model_io import save_sub_model

    save_sub_model(build_sub_model(AutoModel.from_pretrained(other_fm), [0], 16), tmp_path / "other-sub")
    sub = str(assets / "sub")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert "task" in refused(assets, cwd, "--task_name", "nosuchtask").lower()
    assert str(tmp_path / "missing") in refused(assets, cwd, "--dataset_path", str(tmp_path / "missing"))
    assert "derived" in refused(assets, cwd, *pft("--sub_model_checkpoint", str(tmp_path / "other-sub")))
    assert "num_clients" in refused(assets, cwd, "--num_clients", "1000")
    assert "proportion" in refused(assets, cwd, "--proportion", "0")
    assert "proportion" in refused(assets, cwd, "--proportion", "1.5")
    assert "align_retained_ratio" in refused(assets, cwd, "--align_retained_ratio", "1.0")
    assert "lora_rank" in refused(assets, cwd, "--lora_rank", "0")
    assert "corpus" in refused(assets, cwd, *pft("--sub_model_checkpoint", sub, "--distill_dataset1_path", ""))
    assert "corpus" in refused(
        assets, cwd, *pft("--sub_model_checkpoint", sub, "--distill_dataset1_path", str(tmp_path / "nothing.txt"))
    )
    assert "model checkpoint" in refused(assets, cwd, "--model_checkpoint", str(tmp_path / "nofm"))
    assert "sub_model_checkpoint" in refused(assets, cwd, "--method", "pft")
    shutil.rmtree(cwd / "task", ignore_errors=True)


def test_nan_loss_stops_and_names_round_and_client(assets, tmp_path):
    done = fedtune(
        assets, tmp_path, "--method", "peft", "--learning_rate", "1e30", "--max_grad_norm", "0", "--num_rounds", "3"
    )
    assert done.returncode != 0
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "round" in last and "client" in last, done.stderr
    run = next((tmp_path / "fed-result" / "bbc").glob("*/peft-*"))
    assert (run / "server" / "checkpoint-round0").exists()


def test_holdouts(assets, tmp_path):
    done = fedtune(
        assets, tmp_path, "--method", "peft", "--num_rounds", "1", "--test_holdout", "0.5", "--train_holdout", "0.25"
    )
    assert done.returncode == 0, done.stderr
    records = metrics(run_dir(tmp_path, "peft"))
    assert {r["data_split"] for r in records} == {"server_val"}
    (tmp_path / "refused").mkdir()
    assert "test_holdout" in refused(assets, tmp_path / "refused", "--test_holdout", "1.0")
