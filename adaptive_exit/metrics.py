"""Quality metrics computed from predictions and labels."""

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


METRICS = {"accuracy": accuracy, "f1": f1}


def compute(name: str, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The metric called ``name`` ('accuracy' or 'f1')."""
    return METRICS[name](predictions, labels)
