"""Client partitions with flgo's partitioners and their data.json cache (spec §4.3)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from federated_proxy_finetuning.partition import (
    PartitionError,
    dataset_key,
    load_or_create_partition,
    make_partition,
    task_dir_name,
)

LABELS = [i % 4 for i in range(400)]  # four balanced classes
# flgo's Dirichlet search (spec §4.3) converges in milliseconds for two classes, in seconds for a few more
BINARY = [i % 2 for i in range(400)]


def label_skew(parts: list[list[int]], labels: list[int]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    classes = sorted(set(labels))
    overall = np.array([labels.count(c) for c in classes]) / len(labels)
    distances = []
    for part in parts:
        local = np.array([sum(labels[i] == c for i in part) for c in classes]) / len(part)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def assert_disjoint_cover(parts: list[list[int]], size: int) -> None:
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)) == size and set(flat) == set(range(size))


def test_iid_sizes_are_equal_and_cover_every_row():
    parts = make_partition(list(range(103)), num_clients=10)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3  # spec §4.3: the first n mod N get one more
    assert [len(p) for p in parts[:3]] == [11] * 3
    assert_disjoint_cover(parts, 103)


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    skewed = make_partition(BINARY, 8, "dir", dir_alpha=0.3)
    mild = make_partition(BINARY, 8, "dir", dir_alpha=100.0)
    assert_disjoint_cover(skewed, len(BINARY))
    assert_disjoint_cover(mild, len(BINARY))
    assert label_skew(skewed, BINARY) > 2 * label_skew(mild, BINARY)


def test_diversity_limits_classes_per_client_and_accepts_any_label_values():
    sparse_labels = [10 * (i % 4) + 7 for i in range(400)]  # 7, 17, 27, 37: not 0..K-1
    parts = make_partition(sparse_labels, 8, "div", diversity=0.5)
    assert_disjoint_cover(parts, 400)
    assert all(len({sparse_labels[i] for i in p}) == 2 for p in parts)  # max(floor(0.5 * 4), 1) classes each
    stratified = make_partition(sparse_labels, 4, "div", diversity=1.0)
    assert all(sorted(sparse_labels[i] for i in p).count(7) == 25 for p in stratified)


def test_same_seed_same_partition_and_caller_rng_untouched():
    np.random.seed(5)
    expected_next = np.random.rand()
    np.random.seed(5)
    first = make_partition(BINARY, 5, "dir", dir_alpha=1.0, seed=1206)
    assert np.random.rand() == expected_next  # the caller's numpy stream continues where it was
    assert make_partition(BINARY, 5, "dir", dir_alpha=1.0, seed=1206) == first
    assert make_partition(BINARY, 5, "dir", dir_alpha=1.0, seed=7) != first


def test_dirichlet_search_output_goes_to_the_debug_log_not_stdout(capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="federated_proxy_finetuning.partition"):
        make_partition(BINARY, 6, "dir", dir_alpha=0.5)
    assert capsys.readouterr().out == ""
    assert any("Error:" in record.getMessage() for record in caplog.records)


def test_task_dir_name_extends_the_reference_layout_with_seed_and_data_digest():
    assert task_dir_name("sst2", 100, "iid", 0.0, 1.0, 1.0, 7) == "datasetsst2-c100-partitioniid-im0.0-paraNone-seed7"
    assert task_dir_name("sst2", 100, "dir", 0.0, 10.0, 1.0, 7, "abc") == (
        "datasetsst2-c100-partitiondir-im0.0-para10.0-seed7-abc"
    )
    assert task_dir_name("mnli", 10, "div", 0.0, 1.0, 0.5, 1) == "datasetmnli-c10-partitiondiv-im0.0-para0.5-seed1"


def test_cache_is_keyed_by_dataset_labels_and_seed(tmp_path):
    """Issue: a cache made for other data, other labels or another seed is never reused."""
    args = dict(task_name="bbc", num_clients=4, partitioner="iid", dir_alpha=1.0, diversity=1.0, imbalance=0.0)
    first = load_or_create_partition(str(tmp_path), labels=LABELS, seed=1, dataset_identity="/a#f1", **args)
    assert load_or_create_partition(str(tmp_path), labels=LABELS, seed=1, dataset_identity="/a#f1", **args) == first
    assert load_or_create_partition(str(tmp_path), labels=LABELS, seed=2, dataset_identity="/a#f1", **args) != first
    load_or_create_partition(str(tmp_path), labels=LABELS, seed=1, dataset_identity="/b#f1", **args)
    load_or_create_partition(str(tmp_path), labels=LABELS, seed=1, dataset_identity="/a#f2", **args)
    load_or_create_partition(str(tmp_path), labels=list(reversed(LABELS)), seed=1, dataset_identity="/a#f1", **args)
    assert len(list(tmp_path.iterdir())) == 5  # five distinct caches, none reused across them


def test_cache_round_trip_format_and_validation(tmp_path):
    args = dict(
        task_name="bbc",
        labels=LABELS,
        num_clients=4,
        partitioner="iid",
        dir_alpha=1.0,
        diversity=1.0,
        imbalance=0.0,
        seed=1206,
    )
    key = dataset_key("", LABELS)
    cache = tmp_path / task_dir_name("bbc", 4, "iid", 0.0, 1.0, 1.0, 1206, key) / "data.json"
    unwritten = load_or_create_partition(str(tmp_path), **args, write=False)
    assert not cache.exists()
    parts = load_or_create_partition(str(tmp_path), **args)
    assert parts == unwritten
    stored = json.loads(cache.read_text())
    assert list(stored) == ["0", "1", "2", "3"] and [stored[k]["data"] for k in stored] == parts
    assert sorted(p.name for p in cache.parent.iterdir()) == ["data.json", "data.json.sha256"]  # no temp file left

    # a cache whose content changed since it was written is never trusted: it is made again
    altered = {**stored, "0": {"data": list(reversed(stored["0"]["data"]))}}
    cache.write_text(json.dumps(altered))
    assert load_or_create_partition(str(tmp_path), **args) == parts
    assert json.loads(cache.read_text()) == stored
    for damaged in (json.dumps({**stored, "0": {"data": [10_000]}}), json.dumps({"0": {"data": [0]}}), "{not json"):
        cache.write_text(damaged)
        assert load_or_create_partition(str(tmp_path), **args) == parts
        assert json.loads(cache.read_text()) == stored
    # a cache written before digests were kept is reused when it fits the task, and gains its digest
    (cache.parent / "data.json.sha256").unlink()
    cache.write_text(json.dumps(altered))
    assert load_or_create_partition(str(tmp_path), **args)[0] == altered["0"]["data"]
    assert (cache.parent / "data.json.sha256").is_file()
    assert load_or_create_partition(str(tmp_path), **args)[0] == altered["0"]["data"]


def test_errors_are_one_clear_sentence():
    with pytest.raises(PartitionError, match="unknown partitioner 'pathological'; choose one of iid, dir, div"):
        make_partition(LABELS, 4, "pathological")
    with pytest.raises(
        PartitionError, match=r"num_clients must be between 1 and the number of training examples \(400\), got 0"
    ):
        make_partition(LABELS, 0)
    with pytest.raises(PartitionError, match="got 401"):
        make_partition(LABELS, 401)
    with pytest.raises(PartitionError, match="received no data; use fewer clients or a larger dir_alpha"):
        make_partition(BINARY[:40], 35, "dir", dir_alpha=0.01)
    with pytest.raises(PartitionError, match="cannot cover every class"):
        make_partition(list(range(10)) * 4, 2, "div", diversity=0.1)
    with pytest.raises(PartitionError, match="dir_alpha must be positive"):
        make_partition(LABELS, 4, "dir", dir_alpha=0.0)
