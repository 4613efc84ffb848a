"""The exits' outputs and the exit rule: which exit each sample leaves at, for given signals and thresholds."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch

EXIT_RULES = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
TASKS = ("classification", "regression")


@dataclass
class ExitOutputs:
    """What every exit said for a batch.

    ``logits``: ``[num_exits, batch, classes]``; ``pooled``: the pooled hidden state each head saw,
    ``[num_exits, batch, hidden]``. Exit ``i`` (0-based) sits after layer ``i + 1``.
    """

    logits: torch.Tensor
    pooled: torch.Tensor

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]


def exit_condition(scores: torch.Tensor, threshold: torch.Tensor | float, exit_when: str) -> torch.Tensor:
    """True where a score meets the threshold under the rule ``exit_when`` ('<', '<=', '>' or '>=')."""
    return EXIT_RULES[exit_when](scores, threshold)


@functools.lru_cache(maxsize=64)
def threshold_as(dtype: torch.dtype, threshold: float) -> float:
    """``threshold`` rounded to ``dtype``, as torch rounds a number it compares with a tensor of that dtype: a score
    read on the host (``tolist``) meets it under ``EXIT_RULES`` exactly where ``exit_condition`` says so."""
    return float(torch.tensor(threshold, dtype=dtype))


def meets_on_host(scores: torch.Tensor, threshold: float, exit_when: str) -> list[bool]:
    """``exit_condition`` for a ``[batch]`` of scores, read on the host in one call (early exit decides there after
    every layer): a Python bool per sample, the same as ``exit_condition`` gives."""
    limit, rule = threshold_as(scores.dtype, threshold), EXIT_RULES[exit_when]
    return [rule(score, limit) for score in scores.tolist()]


def simulate_exits(scores: torch.Tensor, thresholds: torch.Tensor, exit_when: str) -> torch.Tensor:
    """The 0-based exit index of every sample for every threshold.

    ``scores`` is ``[num_exits, batch]`` (the last exit's row is never consulted: a sample that meets
    no threshold before it leaves there); ``thresholds`` is ``[K]``. Returns ``[K, batch]`` (long).
    A NaN score never triggers an exit.
    """
    num_exits, batch = scores.shape
    thresholds = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device).reshape(-1, 1, 1)
    meets = exit_condition(scores[:-1].detach().unsqueeze(0), thresholds, exit_when)
    last = torch.ones(meets.shape[0], 1, batch, dtype=torch.bool, device=scores.device)
    meets = torch.cat([meets, last], dim=1)
    return meets.to(torch.uint8).argmax(dim=1)


def exit_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-exit, per-sample cross-entropy: ``[num_exits, batch, classes]`` and ``[batch]`` give ``[num_exits, batch]``."""
    num_exits, batch, classes = logits.shape
    flat = torch.nn.functional.cross_entropy(
        logits.reshape(num_exits * batch, classes), labels.repeat(num_exits), reduction="none"
    )
    return flat.reshape(num_exits, batch)


def exit_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-exit, per-sample training loss, ``[num_exits, batch]``: cross-entropy for class labels (integers),
    squared error of the single output for regression targets (floating labels)."""
    if labels.is_floating_point():
        return (logits[..., 0].float() - labels.float()) ** 2
    return exit_cross_entropy(logits, labels)


def exit_predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    """Every exit's prediction, ``[num_exits, batch]``: the class with the largest logit, or the single output."""
    return logits[..., 0] if regression else logits.argmax(-1)


def exit_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each exit got each sample right, ``[num_exits, batch]`` (bool): the right class; for a regression
    target, an error no larger than the median error of that exit over the batch."""
    if not labels.is_floating_point():
        return logits.argmax(-1) == labels
    errors = (logits[..., 0].float() - labels.float()).abs()
    return errors <= errors.median(dim=1, keepdim=True).values


def layer_speedup(exit_index: torch.Tensor, num_exits: int) -> float:
    """L·N / Σ exit layer, for 0-based exit indices of N samples (Eq. 12 of the COSEE paper)."""
    layers = exit_index.double() + 1
    return float(num_exits * layers.numel() / layers.sum())
