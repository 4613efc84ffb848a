"""The baselines' exit signals: patience (PABEE), patience-confidence (PCEE-BERT), LTE (BERxiT), static."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from adaptive_exit import ExitOutputs, Signal


def integer_grid(low: int, high: int) -> torch.Tensor:
    """The thresholds ``low..high`` for signals whose scores are whole numbers."""
    return torch.arange(low, high + 1, dtype=torch.float64)


class PatienceRegressionOptions(BaseModel):
    """Options of the patience signal."""

    model_config = ConfigDict(extra="forbid")
    regression_threshold: float = Field(
        0.1, gt=0, description="regression models: two exits agree when their predictions differ by less than this "
                               "(in the target's units; PABEE's regression threshold)")


class Patience(Signal):
    """PABEE: how many exits in a row before this one agreed with it (the same class; for regression, a prediction
    within ``regression_threshold``); exit once it reaches t."""

    name = "patience"
    exit_when = ">="
    tasks = ("classification", "regression")
    Options = PatienceRegressionOptions

    def __init__(self, options=None, *, num_exits, hidden_size, num_labels):
        super().__init__(options, num_exits=num_exits, hidden_size=hidden_size, num_labels=num_labels)
        self.bounds = (0.0, float(max(num_exits - 1, 1)))

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        regression = outputs.logits.shape[-1] == 1  # one output per exit: a regression model
        predictions = outputs.logits[..., 0].float() if regression else outputs.logits.argmax(-1)
        counts = torch.zeros(predictions.shape, dtype=torch.float32, device=predictions.device)
        for index in range(1, predictions.shape[0]):
            if regression:
                agrees = (predictions[index] - predictions[index - 1]).abs() < self.options.regression_threshold
            else:
                agrees = predictions[index] == predictions[index - 1]
            counts[index] = torch.where(agrees, counts[index - 1] + 1, torch.zeros_like(counts[index]))
        return counts

    def thresholds(self, scores: torch.Tensor, count: int = 200) -> torch.Tensor:
        """Every patience from 0 (all leave at exit 1) to ``num_exits - 1`` (none leaves early)."""
        return integer_grid(0, self.num_exits - 1)


class PatienceOptions(BaseModel):
    """Options of the patience-confidence signal."""

    model_config = ConfigDict(extra="forbid")
    patience: int = Field(2, ge=1, description="consecutive exits that must all be confident")


class PatienceConfidence(Signal):
    """PCEE-BERT: the lowest top-class probability over the last ``patience`` exits; exit when it is above τ."""

    name = "patience-confidence"
    exit_when = ">"
    Options = PatienceOptions

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        confidence = torch.softmax(outputs.logits.float(), dim=-1).amax(-1)
        window = self.options.patience
        scores = torch.zeros_like(confidence)  # too few exits yet: no confidence, never above a threshold >= 0
        for index in range(window - 1, confidence.shape[0]):
            scores[index] = confidence[index - window + 1: index + 1].amin(0)
        return scores

    def thresholds(self, scores: torch.Tensor, count: int = 200) -> torch.Tensor:
        """The default quantile grid over the exits with a full window, never below 0."""
        return super().thresholds(scores[self.options.patience - 1:], count).clamp(min=0.0).unique()


class LearnToExit(Signal):
    """BERxiT's learning-to-exit: one linear layer + sigmoid shared by all exits, predicting 'this exit is right'."""

    name = "lte"
    exit_when = ">"
    uses_history = False

    def __init__(self, options=None, *, num_exits, hidden_size, num_labels):
        super().__init__(options, num_exits=num_exits, hidden_size=hidden_size, num_labels=num_labels)
        self.certainty = torch.nn.Linear(hidden_size, 1)

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        pooled = outputs.pooled.to(self.certainty.weight.dtype)
        return torch.sigmoid(self.certainty(pooled)).squeeze(-1)

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor) -> torch.Tensor:
        """MSE between each internal exit's certainty and 1 where that exit's prediction is right, else 0.

        The pooled states are detached: the module learns to read the exits without changing them.
        """
        target = lte_target(outputs.logits.detach(), labels)[:-1]
        certainty = self.score(ExitOutputs(outputs.logits.detach(), outputs.pooled.detach()))[:-1]
        return torch.nn.functional.mse_loss(certainty, target)


def lte_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[num_exits, batch]``: 1.0 where the exit's prediction equals the label, else 0.0."""
    return (logits.argmax(-1) == labels).float()


class LearnToExitRegression(Signal):
    """BERxiT's learning-to-exit for regression: one linear layer + softplus shared by all exits, predicting the
    exit's absolute error |y_i - y|; exit when it is below the threshold (in the target's units)."""

    name = "lte-regression"
    exit_when = "<"
    uses_history = False
    tasks = ("regression",)

    def __init__(self, options=None, *, num_exits, hidden_size, num_labels):
        super().__init__(options, num_exits=num_exits, hidden_size=hidden_size, num_labels=num_labels)
        self.error = torch.nn.Linear(hidden_size, 1)

    bounds = property(Signal.distance_bounds)

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        pooled = outputs.pooled.to(self.error.weight.dtype)
        return torch.nn.functional.softplus(self.error(pooled)).squeeze(-1)

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor) -> torch.Tensor:
        """MSE between each internal exit's predicted error and its real one, |y_i - y| (pooled states and
        predictions detached)."""
        target = (outputs.logits.detach()[..., 0].float() - labels.float()).abs()[:-1]
        predicted = self.score(ExitOutputs(outputs.logits.detach(), outputs.pooled.detach()))[:-1]
        return torch.nn.functional.mse_loss(predicted, target)


class Static(Signal):
    """Static budget ('BERT-kL'): every sample leaves at layer k, the threshold."""

    name = "static"
    exit_when = ">="
    tasks = ("classification", "regression")

    def __init__(self, options=None, *, num_exits, hidden_size, num_labels):
        super().__init__(options, num_exits=num_exits, hidden_size=hidden_size, num_labels=num_labels)
        self.bounds = (1.0, float(num_exits))

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        """The 1-based layer of each exit (it reads the history only to know how deep it is)."""
        layers = torch.arange(1, outputs.num_exits + 1, dtype=torch.float32, device=outputs.logits.device)
        return layers[:, None].expand(-1, outputs.logits.shape[1])

    def thresholds(self, scores: torch.Tensor, count: int = 200) -> torch.Tensor:
        """Every layer k from 1 to ``num_exits``."""
        return integer_grid(1, self.num_exits)
