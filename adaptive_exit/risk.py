"""Risk-controlled thresholds (Learn-then-Test): the most aggressive threshold whose risk is certified at most ε
with probability at least 1 − δ over the draw of the calibration data.

Each threshold's risk is the mean of a per-sample loss in {0, 1} (the early answer is wrong where the full
model's is right, or differs from it). For such a loss the number of losses among n exchangeable samples is
binomial, so the exact binomial test (the Clopper–Pearson bound) is the tightest valid test, tighter than
Hoeffding–Bentkus, which is for losses anywhere in [0, 1]. Thresholds are tested in a fixed sequence, from the
most conservative to the most aggressive, each at level δ, stopping at the first that fails: this controls the
chance of certifying any threshold whose risk is above ε at δ, whatever the risks look like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

RISKS = ("accuracy-drop", "disagreement")


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def p_value(losses: int, n: int, max_risk: float) -> float:
    """The exact binomial p-value of "the risk is above ``max_risk``" after ``losses`` losses in ``n`` samples: the
    chance of so few losses if the risk were ``max_risk``."""
    return binomial_cdf(losses, n, max_risk)


def upper_bound(losses: int, n: int, delta: float) -> float:
    """The Clopper–Pearson upper confidence bound of the risk at level ``delta``: the largest risk under which
    ``losses`` or fewer losses in ``n`` samples still have a chance of at least ``delta``."""
    if n == 0 or losses >= n:
        return 1.0
    low, high = losses / n, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if binomial_cdf(losses, n, middle) >= delta:
            low = middle
        else:
            high = middle
    return high


def samples_needed(max_risk: float, delta: float) -> int:
    """The fewest samples with which even a threshold with no loss at all is certified: (1 − ε)^n <= δ."""
    return math.ceil(math.log(delta) / math.log1p(-max_risk))


def fixed_sequence(p_values: Iterable[float], delta: float) -> int:
    """How many hypotheses, tested in order each at level ``delta``, are rejected before the first that is not (the
    p-values after it are never computed)."""
    passed = 0
    for value in p_values:
        if value > delta:
            break
        passed += 1
    return passed


@dataclass
class Certified:
    """The outcome of risk control: the chosen threshold (None if none is certified), its empirical risk, upper
    confidence bound and layer speed-up on the calibration data, and how many thresholds passed."""

    threshold: float | None
    risk: float | None
    upper_bound: float | None
    speedup: float | None
    passed: int
    samples: int


def per_sample_losses(early: torch.Tensor, full: torch.Tensor, labels: torch.Tensor | None, risk: str) -> torch.Tensor:
    """``[thresholds, N]`` losses in {0, 1}: the early answer (``early``, ``[thresholds, N]`` predicted classes) is
    wrong where the full model's (``full``, ``[N]``) is right ('accuracy-drop', needs ``labels``), or differs from
    it ('disagreement', no labels)."""
    if risk == "disagreement":
        return (early != full).to(torch.int64)
    if labels is None:
        raise ValueError("the accuracy-drop risk needs labels")
    return ((early != labels) & (full == labels)).to(torch.int64)


def certify(losses: torch.Tensor, speedups: list[float], thresholds: list[float], max_risk: float,
            delta: float) -> Certified:
    """Fixed-sequence testing over ``thresholds`` (ordered from the most conservative to the most aggressive, with
    their ``losses`` ``[thresholds, N]`` and layer ``speedups`` on the calibration data): the last one certified."""
    n = losses.shape[1]
    counts = losses.sum(1).tolist()
    passed = fixed_sequence((p_value(int(k), n, max_risk) for k in counts), delta)
    if passed == 0:
        return Certified(None, None, None, None, 0, n)
    chosen = passed - 1
    return Certified(thresholds[chosen], counts[chosen] / n, upper_bound(int(counts[chosen]), n, delta),
                     speedups[chosen], passed, n)
