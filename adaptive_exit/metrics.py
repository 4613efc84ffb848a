"""Quality metrics computed from predictions and targets: accuracy and F1 for classification; Pearson, Spearman
and mean squared error for regression."""

from __future__ import annotations

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to the labels."""
    return float((predictions == labels).double().mean()) if labels.numel() else 0.0


def f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary F1 of the positive class (label 1)."""
    tp = float(((predictions == 1) & (labels == 1)).sum())
    fp = float(((predictions == 1) & (labels != 1)).sum())
    fn = float(((predictions != 1) & (labels == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def pearson(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Pearson correlation of predictions and targets; 0 where either does not vary (it is undefined there)."""
    x, y = predictions.double() - predictions.double().mean(), labels.double() - labels.double().mean()
    spread = float(x.norm() * y.norm())
    return float((x * y).sum()) / spread if spread > 0 else 0.0


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks (as Spearman's correlation needs)."""
    values = values.double()
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64, device=values.device)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64, device=values.device).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(sums).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's of the average ranks."""
    return pearson(average_ranks(predictions), average_ranks(labels)) if labels.numel() else 0.0


def mse(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean squared error."""
    return float(((predictions.double() - labels.double()) ** 2).mean()) if labels.numel() else 0.0


METRICS = {"accuracy": accuracy, "f1": f1, "pearson": pearson, "spearman": spearman, "mse": mse}
REGRESSION_EXTRAS = ("spearman", "mse")  # reported per exit beside a regression sweep's metric (Pearson)


def compute(name: str, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The metric called ``name`` (a key of ``METRICS``)."""
    return METRICS[name](predictions, labels)
