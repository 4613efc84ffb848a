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
from typing import Any, Iterable

import torch

from .exits import exit_predictions, simulate_exits

RISKS = ("accuracy-drop", "disagreement")


def p_value(losses: Any, n: int, max_risk: float) -> Any:
    """The exact binomial p-value of "the risk is above ``max_risk``" after ``losses`` losses in ``n`` samples (a
    number, or an array of them): the chance of so few losses, P(Binomial(n, max_risk) <= losses), if the risk were
    ``max_risk``."""
    from scipy.stats import binom

    values = binom.cdf(losses, n, max_risk)
    return float(values) if values.ndim == 0 else values


def upper_bound(losses: int, n: int, delta: float) -> float:
    """The Clopper–Pearson upper confidence bound of the risk at level ``delta``: the risk under which ``losses`` or
    fewer losses in ``n`` samples have a chance of exactly ``delta`` (1 when every sample is a loss)."""
    from scipy.stats import beta

    return 1.0 if losses >= n else float(beta.ppf(1.0 - delta, losses + 1, n - losses))


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


def exits_and_answers(logits: torch.Tensor, scores: torch.Tensor, thresholds: torch.Tensor,
                      exit_when: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every threshold, each sample's exit (0-based, ``[thresholds, N]``) and early answer (``[thresholds, N]``);
    and the full model's answers ``[N]`` (classes from all-exits ``logits`` and the signal's ``scores``)."""
    predictions = exit_predictions(logits, regression=False)
    exit_index = simulate_exits(scores, thresholds, exit_when)
    return exit_index, predictions.gather(0, exit_index), predictions[-1]


def speedups(exit_index: torch.Tensor, num_exits: int) -> torch.Tensor:
    """The layer speed-up of every threshold (rows of ``exit_index``) over its samples (columns)."""
    return num_exits * exit_index.shape[1] / (exit_index + 1).sum(1).double()


def risk_bounds(early: torch.Tensor, full: torch.Tensor, labels: torch.Tensor, delta: float) -> list[dict[str, float]]:
    """Per threshold: the empirical accuracy-drop and disagreement risks and their upper confidence bounds at
    ``delta`` (what ``evaluate --json`` shows beside each point of the sweep)."""
    n = early.shape[1]
    found = {name: per_sample_losses(early, full, labels, name).sum(1).tolist() for name in RISKS}
    return [{f"{name.replace('-', '_')}{suffix}": value for name in RISKS
             for suffix, value in (("", found[name][k] / n), ("_ucb", upper_bound(int(found[name][k]), n, delta)))}
            for k in range(early.shape[0])]


def certify(losses: list[int], n: int, speedups: list[float], thresholds: list[float], max_risk: float,
            delta: float) -> Certified:
    """Fixed-sequence testing over ``thresholds`` (ordered from the most conservative to the most aggressive), with
    each one's number of ``losses`` among the ``n`` calibration samples and its layer ``speedups`` there: the last
    one certified."""
    passed = fixed_sequence(p_value(losses, n, max_risk).tolist(), delta)
    if passed == 0:
        return Certified(None, None, None, None, 0, n)
    chosen = passed - 1
    return Certified(thresholds[chosen], losses[chosen] / n, upper_bound(int(losses[chosen]), n, delta),
                     speedups[chosen], passed, n)
