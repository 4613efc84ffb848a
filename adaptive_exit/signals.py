"""Exit signals: the base class plugins subclass, and the built-ins (entropy, maxprob, energy)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import PluginError, UsageError
from .exits import ExitOutputs
from .hookspecs import hookimpl
from .plugins import blamed, create, describe, lookup, registry
from .precision import as_fp32

MARGIN = 0.01  # how far past the scores, as a share of their span, the sweep's grid reaches at each end


class NoOptions(BaseModel):
    """A plugin without options."""

    model_config = ConfigDict(extra="forbid")


class TemperatureOptions(BaseModel):
    """Options of the softmax-based signals."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T applied to the logits")


class Signal(torch.nn.Module):
    """An exit signal: a score per exit and sample, and the rule that turns a score into an exit.

    Subclasses set ``name``, ``exit_when`` (exit when the score is '<', '<=', '>' or '>=' the
    threshold), ``bounds`` (the score's range, used where no data says otherwise), ``tasks`` (the
    task types it serves: 'classification', 'regression') and ``Options`` (a pydantic model; each
    field becomes a command-line flag), and implement ``score``. The engine sets ``task`` (the model's)
    and, for a regression model, ``target_range`` (the training targets' lowest and highest) before the
    signal is used.

    A signal may read every exit up to the current one (``score`` must be causal: the score of exit
    ``i`` depends only on exits ``0..i``), may hold trainable parameters (it is a ``torch.nn.Module``)
    and may add its own training loss by overriding ``loss``. A signal whose score of exit ``i`` reads
    exit ``i`` alone sets ``uses_history = False``, so early-exit inference need not keep earlier exits.
    """

    name: ClassVar[str] = ""
    exit_when: ClassVar[str]  # required: a subclass that does not set it is refused at registration
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    Options: ClassVar[type[BaseModel]] = NoOptions
    uses_history: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def __init__(self, options: BaseModel | None = None, *, num_exits: int, hidden_size: int, num_labels: int):
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.num_exits = num_exits
        self.hidden_size = hidden_size
        self.num_labels = num_labels
        self.task = "classification"
        self.target_range: tuple[float, float] | None = None

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        """The score of every exit for every sample: a floating ``[num_exits, batch]`` tensor.

        NaN means "no score at this exit" and never triggers an exit (for example too few exits yet for a
        history-reading signal); every other score is finite for finite logits.
        """
        raise NotImplementedError

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor) -> torch.Tensor | None:
        """An extra training loss for the signal's own parameters, or ``None``."""
        return None

    def distance_bounds(self) -> tuple[float, float]:
        """(0, the training targets' span), or (0, 1) while it is unknown: the ``bounds`` of a regression signal
        scored as a distance in the target's units, which sets ``bounds = property(Signal.distance_bounds)``."""
        low, high = self.target_range or (0.0, 1.0)
        return 0.0, float(high - low)

    def thresholds(self, scores: torch.Tensor, count: int = 200) -> torch.Tensor:
        """A threshold grid for the evaluation sweep, spanning 'no early exit' to 'all exit at the first exit'.

        ``scores`` are this signal's scores on the evaluation data, ``[num_exits, N]``. The default uses
        midpoints between quantiles of the internal exits' scores, plus a value past each end.
        """
        internal = scores[:-1].flatten().double()
        internal = internal[torch.isfinite(internal)]
        if internal.numel() == 0:
            return torch.tensor(self.bounds, dtype=torch.float64)
        grid = torch.unique(torch.quantile(internal, torch.linspace(0, 1, count, dtype=torch.float64)))
        span = float(internal.max() - internal.min()) or 1.0
        ends = torch.tensor([float(internal.min()) - MARGIN * span, float(internal.max()) + MARGIN * span],
                            dtype=torch.float64)
        # midpoints, so that no threshold sits exactly on a score, where rounding could flip an exit
        return torch.unique(torch.cat([ends, (grid[1:] + grid[:-1]) / 2]))


def require_task(name: str, task: str) -> None:
    """A UsageError if the signal ``name`` does not serve ``task``, naming the signals that do."""
    if task not in lookup("signals", name).cls.tasks:
        serving = sorted(other for other, entry in registry("signals").items() if task in entry.cls.tasks)
        raise UsageError(f"signal '{name}' does not support {task}; signals for {task}: {', '.join(serving)}")


def build_signal(name: str, options: dict, *, num_exits: int, hidden_size: int, num_labels: int,
                 task: str = "classification", target_range: tuple[float, float] | None = None) -> Signal:
    """The signal ``name`` with its ``options`` for a model of ``task`` ('classification' or 'regression'), or a
    UsageError naming the signals that serve that task; ``target_range`` is a regression model's."""
    require_task(name, task)
    if task == "classification" and num_labels < 2:
        raise UsageError(f"a classification model needs at least two classes, and this one has {num_labels}; no exit "
                         f"signal is defined on one class")
    signal = create("signals", name, options, num_exits=num_exits, hidden_size=hidden_size, num_labels=num_labels)
    signal.task, signal.target_range = task, target_range
    return signal


def threshold_range(signal: Signal) -> tuple[float, float]:
    """The thresholds that make sense for a signal: its ``bounds``, widened by the share of the span that the sweep's
    grid reaches past the scores at each end (so every threshold a sweep or ``calibrate`` picks is inside)."""
    low, high = (float(bound) for bound in signal.bounds)
    spare = MARGIN * max(high - low, 1.0)
    return low - spare, high + spare


def _shape_problem(scores: object, exits: int, batch: int) -> str | None:
    if not isinstance(scores, torch.Tensor):
        return f"returned {type(scores).__name__}, not a tensor"
    if not scores.is_floating_point():
        return f"returned a {scores.dtype} tensor, not a floating one"
    if tuple(scores.shape) != (exits, batch):
        return f"returned shape {list(scores.shape)} for {exits} exit(s) and {batch} sample(s)"
    return None


def checked_score(signal: Signal, outputs: ExitOutputs) -> torch.Tensor:
    """``signal.score(outputs)``, checked to be a floating ``[exits, batch]`` tensor; a PluginError naming the signal
    otherwise.

    Where exits and samples are equally many (so ``[batch, exits]`` has the right shape too), the score of the
    first sample alone is checked as well.
    """
    exits, batch = outputs.logits.shape[:2]
    with blamed("signals", type(signal), "score"):
        scores = signal.score(outputs)
        problem = _shape_problem(scores, exits, batch)
        if problem is None and exits == batch > 1:
            alone = ExitOutputs(outputs.logits[:, :1], outputs.pooled[:, :1])
            problem = _shape_problem(signal.score(alone), exits, 1)
    if problem is not None:
        raise PluginError(f"{describe('signals', type(signal))}: score {problem}; it must return a floating tensor "
                          f"of shape [exits, batch], one score per exit and sample")
    return scores


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature, bounded to +-1e30 so that no finite logit leads to inf or NaN."""
    scaled = as_fp32(logits) if temperature == 1.0 else as_fp32(logits) / temperature
    return scaled.clamp(-1e30, 1e30)


class Entropy(Signal):
    """Normalized entropy of the exit's softmax, in [0, 1]: exit when it is below the threshold."""

    name = "entropy"
    exit_when = "<"
    Options = TemperatureOptions
    uses_history = False

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        log_p = torch.log_softmax(_scaled(outputs.logits, self.options.temperature), dim=-1)
        entropy = (log_p.exp() * log_p).sum(-1)  # log_p is finite, so p = 0 adds exactly 0
        return (entropy * (-1.0 / math.log(outputs.logits.shape[-1]))).clamp(0.0, 1.0)


class MaxProb(Signal):
    """Largest softmax probability (the 'softmax score'): exit when it is above the threshold."""

    name = "maxprob"
    exit_when = ">"
    Options = TemperatureOptions
    uses_history = False

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        return torch.softmax(_scaled(outputs.logits, self.options.temperature), dim=-1).amax(-1)


class Energy(Signal):
    """Normalized energy sigmoid(-T·logsumexp(z/T)), in (0, 1): exit when it is below the threshold."""

    name = "energy"
    exit_when = "<"
    Options = TemperatureOptions
    uses_history = False

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        temperature = self.options.temperature
        energy = -temperature * torch.logsumexp(_scaled(outputs.logits, temperature), dim=-1)
        return torch.sigmoid(energy)


class Change(Signal):
    """How far a regression exit's prediction moved from the exit before's, |y_i - y_(i-1)|: exit when it is below the
    threshold (in the target's units). NaN at the first exit, which has none before it: no sample leaves there, so
    the largest layer speed-up is L/2."""

    name = "change"
    exit_when = "<"
    tasks = ("regression",)

    bounds = property(Signal.distance_bounds)

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        values = outputs.logits[..., 0].float()
        change = torch.full_like(values, float("nan"))
        change[1:] = (values[1:] - values[:-1]).abs()
        return change


@hookimpl
def register_signals(register):
    for cls in (Entropy, MaxProb, Energy, Change):
        register(cls)
