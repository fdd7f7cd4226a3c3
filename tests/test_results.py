"""The run summary (federated_proxy_finetuning/results.py): the final round is the last evaluated one, the best round
the best *trained* one (round 0 is the untrained FM, never the best), and its checkpoint is the one kept."""

from __future__ import annotations

import json

from federated_proxy_finetuning.results import RunFolder


def history(*accuracies: float | None) -> list[dict]:
    """Rounds 0, 1, ...; None = a round not evaluated."""
    return [{"round": r, "fm": {} if a is None else {"eval_accuracy": a}} for r, a in enumerate(accuracies)]


def test_best_is_a_trained_round_even_when_round_0_scored_higher(tmp_path):
    run = RunFolder(tmp_path / "run", is_main=True)
    run.prepare(resume=False, overwrite=False)
    summary = run.write_summary(history(0.9, 0.5, None, 0.7, 0.6), "accuracy", True, {})
    assert (summary["final_round"], summary["final"]["eval_accuracy"]) == (4, 0.6)
    assert (summary["best_round"], summary["best_metric"]) == (3, 0.7)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_round"] == 3
    assert RunFolder.best_rounds(history(0.9, 0.5, 0.7, 0.7), "accuracy") == {2}  # the earliest of equals


def test_only_round_0_evaluated_has_a_final_but_no_best(tmp_path):
    run = RunFolder(tmp_path / "run", is_main=True)
    run.prepare(resume=False, overwrite=False)
    summary = run.write_summary(history(0.4, None), "accuracy", False, {})
    assert summary["final_round"] == 0 and "best_round" not in summary
    assert RunFolder.best_rounds(history(0.4), "accuracy") == set()
