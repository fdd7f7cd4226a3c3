"""Verdicts on the orderings the paper claims, from paired per-seed differences between two experiment cells.

Runs with the same seed in two cells of one model and task share the data partition and every client draw, so the
difference A_s - B_s of their final accuracies is a paired observation. A link "A > B" (strict) or "A ≥ B"
(ties allowed) is judged with a two-sided paired t-test on those differences; the p-values of all testable links of
one family (one block of one table) are adjusted with Holm's step-down method at family-wise level ALPHA.

Link verdicts: a strict link is *held* when its Holm p ≤ ALPHA and the mean difference points the better way
(positive where higher is better, as for an accuracy; negative where lower is, as for a loss: see measures.py),
*contradicted* when its Holm p ≤ ALPHA and it points the other way, *inconclusive* otherwise; a tie-allowing link is
*consistent* unless contradicted. A link with one common seed is inconclusive (no interval), one without a common
seed is n/a, one touching a cell whose every run predicted a single class is *untestable* and leaves the family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
STRICT, TIES = ">", "≥"


@dataclass(frozen=True)
class PairedTest:
    """Paired t statistics of the differences A_s - B_s over n common seeds: mean difference `delta`, sample std
    `sd`, the two-sided t-interval [low, high] at the given confidence and the two-sided p-value. Fields that n does
    not support are None: everything but n when n = 0; sd, interval and p when n = 1."""

    n: int
    delta: float | None = None
    sd: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None

    def interval_text(self, digits: int = 1) -> str:
        """The mean difference and its interval to `digits` decimals, e.g. "+5.1 [−3.2, +13.3]" ("+5.1" without an
        interval, "" when n = 0)."""
        if self.delta is None:
            return ""
        bounds = "" if self.low is None else f" [{signed(self.low, digits)}, {signed(self.high, digits)}]"
        return signed(self.delta, digits) + bounds


def signed(value: float, digits: int = 1) -> str:
    """A value to `digits` decimals with its sign and a typographic minus, e.g. "+5.1", "−3.2"."""
    return f"{value:+.{digits}f}".replace("-", "−")


def format_p(p: float) -> str:
    """A p-value as printed: two decimals, three below 0.01, "<0.001" below that, "0" when exactly 0."""
    return "0" if p == 0 else "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


@dataclass(frozen=True)
class LinkVerdict:
    """The verdict of one link (held, contradicted, inconclusive, consistent, untestable or n/a) and, for the
    degenerate cases, why."""

    verdict: str
    reason: str = ""


def paired_t(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedTest:
    """Paired t-test of `differences` (one per common seed) against a zero mean.

    Interval: delta ± t_{(1+confidence)/2, n-1} · sd / sqrt(n); p = 2 · P(T_{n-1} > |delta| / (sd / sqrt(n))).
    Without spread (sd = 0) the interval is [delta, delta] and p is 0, or 1 when delta is 0 too."""
    values = [float(d) for d in differences]
    n = len(values)
    if n == 0:
        return PairedTest(0)
    delta = math.fsum(values) / n
    if n == 1:
        return PairedTest(1, delta)
    sd = math.sqrt(math.fsum((v - delta) ** 2 for v in values) / (n - 1))
    if sd <= 1e-12 * max(1.0, abs(delta)):  # equal differences, up to rounding of their mean
        if abs(delta) <= 1e-12:
            return PairedTest(n, 0.0, 0.0, 0.0, 0.0, 1.0)
        return PairedTest(n, delta, 0.0, delta, delta, 0.0)
    error = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * error
    p = 2 * float(stats.t.sf(abs(delta) / error, n - 1))
    return PairedTest(n, delta, sd, delta - half, delta + half, min(1.0, p))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values, in their given order: with p_(1) ≤ ... ≤ p_(m) sorted,
    adjusted p_(k) = max_{j ≤ k} min(1, (m - j + 1) · p_(j))."""
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def link_verdict(
    op: str, test: PairedTest, holm_p: float | None, untestable: bool = False, alpha: float = ALPHA, better: int = 1
) -> LinkVerdict:
    """The verdict of link `A op B` (op ">" or "≥": A better than B) from its paired test of A_s - B_s and
    Holm-adjusted p (see the module docstring); `better` is +1 when higher values are better, -1 when lower are."""
    if untestable:
        return LinkVerdict("untestable", "a cell predicted one class in every run")
    if test.n == 0:
        return LinkVerdict("n/a", "no common seed")
    if test.n == 1:
        return LinkVerdict("inconclusive", "1 common seed")
    significant, gain = holm_p is not None and holm_p <= alpha, test.delta * better  # gain > 0: A is better
    if significant and gain < 0:
        return LinkVerdict("contradicted")
    if op == TIES:
        return LinkVerdict("consistent")
    return LinkVerdict("held" if significant and gain > 0 else "inconclusive")


def judge_family(
    links: Sequence[tuple[str, PairedTest, bool] | tuple[str, PairedTest, bool, int]], alpha: float = ALPHA
) -> list[tuple[float | None, LinkVerdict]]:
    """(Holm p, verdict) of every link (op, paired test, untestable[, better]) of one family; `better` (+1 if left
    out) is the direction of the link's measure, so links on an accuracy and on a loss can share one family. The
    family, over which Holm's adjustment runs, is the testable links: those not untestable with a p-value (two or more
    common seeds); the others get Holm p None."""
    testable = [i for i, (_, test, untestable, *_) in enumerate(links) if not untestable and test.p is not None]
    adjusted = dict(zip(testable, holm([links[i][1].p for i in testable])))
    return [
        (adjusted.get(i), link_verdict(op, test, adjusted.get(i), untestable, alpha, *better))
        for i, (op, test, untestable, *better) in enumerate(links)
    ]


def claim_verdict(links: Sequence[tuple[str, str]]) -> str:
    """The verdict of a claim from its links' (op, verdict): untestable if any link is, else n/a if any is (a
    missing cell), else contradicted if any is, else held when every strict link is held and every tie-allowing
    link consistent, else inconclusive."""
    verdicts = [verdict for _, verdict in links]
    for decisive in ("untestable", "n/a", "contradicted"):
        if decisive in verdicts:
            return decisive
    expected = {STRICT: "held", TIES: "consistent"}
    return "held" if all(verdict == expected[op] for op, verdict in links) else "inconclusive"
