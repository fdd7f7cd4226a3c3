"""The round-profile tooling: timings.jsonl in the run folder, and the pure helpers of the round profile
(federated_proxy_finetuning/bench/round_parts.py, used by scripts/profile_round.py)."""

from __future__ import annotations

import logging

import pytest

from federated_proxy_finetuning.bench import round_parts as pr
from federated_proxy_finetuning.results import RunFolder


def timing(r: int, total: float, **parts: float) -> dict:
    return {"round": r, **parts, "total": total}


def test_round_split_takes_medians_and_computes_the_rest_per_round():
    rounds = [
        timing(1, 10.0, train=6.0, aggregate=0.5, eval=1.0, align=2.0, checkpoint=0.2, log=0.1),  # rest 0.2
        timing(2, 20.0, train=12.0, aggregate=0.5, eval=3.0, align=4.0, checkpoint=0.2, log=0.1),  # rest 0.2
        timing(3, 12.0, train=7.0, aggregate=0.5, eval=2.0, align=2.0, checkpoint=0.4, log=0.1),  # rest 0.0
    ]
    split = pr.round_split(rounds)
    assert split["rounds"] == [1, 2, 3] and split["total_seconds"] == 12.0
    parts = split["parts"]
    assert list(parts) == list(pr.PARTS)
    assert parts["train"]["seconds"] == 7.0 and parts["eval"]["seconds"] == 2.0 and parts["align"]["seconds"] == 2.0
    assert parts["checkpoint"]["seconds"] == 0.2 and parts["log"]["seconds"] == 0.1
    assert parts["rest"]["seconds"] == pytest.approx(0.2)
    assert parts["train"]["percent"] == pytest.approx(100 * 7 / 12)


def test_round_split_counts_a_missing_part_as_zero_and_refuses_nothing():
    split = pr.round_split([timing(0, 4.0, eval=3.0, checkpoint=0.5)])  # round 0: no training, no alignment
    parts = split["parts"]
    assert parts["train"]["seconds"] == 0.0 and parts["align"]["seconds"] == 0.0
    assert parts["rest"]["seconds"] == pytest.approx(0.5) and parts["eval"]["percent"] == pytest.approx(75.0)
    with pytest.raises(ValueError):
        pr.round_split([])


def test_comparison_reports_medians_rates_and_the_time_ratio():
    result = pr.comparison([2.0, 4.0, 3.0], [1.0, 10.0, 2.0], work=60, unit="examples")
    assert result["suite_median_seconds"] == 3.0 and result["plain_median_seconds"] == 2.0
    assert result["suite_examples_per_second"] == 20.0 and result["plain_examples_per_second"] == 30.0
    assert result["time_ratio_suite_to_plain"] == 1.5


def test_interleaved_runs_round_robin():
    calls = []
    times = pr.interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b"] * 3 and times == {"a": [1.0] * 3, "b": [2.0] * 3}


def test_markdown_names_every_part_and_both_comparisons():
    split = pr.round_split([timing(1, 10.0, train=6.0, aggregate=0.5, eval=1.0, align=2.0, checkpoint=0.2, log=0.1)])
    result = {
        "settings": {"device": "cpu", "torch_threads": 1},
        "round": split,
        "eval": {**pr.comparison([1.0], [0.95], 308, "examples"), "batch_size": 16},
        "align": {**pr.comparison([2.0], [1.8], 3, "steps"), "effective_batch_size": 32},
    }
    table = pr.markdown(result)
    for name in pr.PARTS.values():
        assert f"| {name} |" in table
    assert "| evaluation, 308 examples, batch 16 (examples/s) | 308.0 | 324.2 | 1.053 |" in table
    assert "alignment, 3 steps of 32 blocks" in table


def test_timings_file_is_rewritten_truncated_and_survives_damage(tmp_path, caplog):
    run = RunFolder(tmp_path / "run", is_main=True)
    assert run.read_timings() == []
    records = [{"round": r, "total": float(r)} for r in range(4)]
    run.write_timings(records)
    assert run.read_timings() == records
    assert run.truncate_timings(1) == records[:2] and run.read_timings() == records[:2]
    run.timings_path.write_text('{"round": 0}\n{"round": 1, "tot')  # cut off mid-line
    with caplog.at_level(logging.WARNING):
        assert run.read_timings() == []
    assert "timings" in caplog.text
    other = RunFolder(tmp_path / "other", is_main=False)  # only the main process writes
    other.write_timings(records)
    assert not other.timings_path.exists()
