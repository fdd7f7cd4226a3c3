"""What a claimed ordering compares: a Measure names the per-run final number a link reads, where the cell statistics
keep it, how it is printed and which way is better. A link "A > B" says A is *better* than B on its measure: higher
for an accuracy, lower for a loss, so the verdicts (verdicts.link_verdict) read the sign of the paired differences
A_s - B_s through the measure's direction instead of assuming that higher wins."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    """One final number per run that links compare.

    column: the run record's column (runs.run_record); scale: its factor for display and tests (100: a fraction
    shown in %); seeds / mean: the cell statistics' columns of its per-seed values {seed: value} and of its mean
    (cells.cell_stats); name: how test lines name it; unit: of its differences; better: +1 when higher is better,
    -1 when lower is; digits: decimals printed; one_class: whether a cell whose every run predicted a single class
    leaves it untestable (true of an accuracy, not of a loss)."""

    column: str
    scale: float
    seeds: str
    mean: str
    name: str
    unit: str
    better: int = 1
    digits: int = 1
    one_class: bool = True

    def described(self) -> str:
        """The measure as a test line names it, with its direction when lower is better."""
        return self.name + (", where lower is better" if self.better < 0 else "")


# the run's own metric (accuracy for the paper's tables, topic accuracy for Table 5) and the answer loss of a causal
# LM (token-weighted NLL of the answer tokens on the held-out records, in nats)
ACCURACY = Measure("final", 100, "finals", "final_mean", "final-round accuracy", "points")
TOPIC_ACCURACY = Measure("final", 100, "finals", "final_mean", "final-round topic accuracy", "points")
ANSWER_LOSS = Measure(
    "final_loss", 1, "loss_finals", "loss_mean", "final answer loss", "nats", better=-1, digits=3, one_class=False
)
MEASURES = (ACCURACY, ANSWER_LOSS)  # one per distinct (column, seeds): what cell_stats keeps per seed
