"""Training weighting schemes: the base class plugins subclass, and the built-in uniform average."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from .errors import PluginError
from .exits import ExitOutputs, exit_losses
from .hookspecs import hookimpl
from .plugins import blamed, describe
from .signals import NoOptions, Signal


@dataclass
class WeightingLoss:
    """A training loss and the named terms worth logging beside it (plain floats)."""

    total: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Weighting:
    """A training objective over all exits, possibly stateful.

    Subclasses set ``name`` and ``Options`` (a pydantic model; each field becomes a command-line
    flag) and implement ``loss``. ``start_epoch`` and ``start_step`` may freeze or unfreeze parameters
    for training stages; ``loss`` receives the optimizer step so it can follow schedules or alternate
    objectives; ``end_epoch`` may update statistics gathered during the epoch. A parameter frozen with
    ``requires_grad_(False)`` gets no gradient and the optimizer leaves it exactly as it is. A weighting
    with state of its own implements ``state_dict`` and ``load_state_dict``, so that ``train --resume``
    continues it exactly.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None, *, signal: Signal, num_exits: int, total_steps: int):
        self.options = options if options is not None else self.Options()
        self.signal = signal
        self.num_exits = num_exits
        self.total_steps = total_steps

    def start_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        """Called before each epoch (0-based) with the unwrapped ``MultiExitModel``."""

    def start_step(self, model: torch.nn.Module, step: int) -> None:
        """Called before each batch's forward pass with the unwrapped ``MultiExitModel`` and the optimizer
        steps taken so far."""

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        """The loss for one batch; ``step`` is the number of optimizer steps taken so far."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch (0-based)."""

    def state_dict(self) -> dict[str, Any]:
        """What a training resumed from a checkpoint needs to continue this weighting exactly (statistics, a
        stage: what is not in the options or derived from the step), as tensors, numbers, strings, lists and dicts.
        The default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned. On a resume it is called after ``__init__`` (and after
        ``start_epoch``, where the checkpoint was taken inside an epoch), before the next ``start_step``."""


def checked_loss(weighting: Weighting, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
    """``weighting.loss(...)``, checked to be a ``WeightingLoss`` whose ``total`` is a finite scalar tensor; a
    PluginError naming the weighting otherwise."""
    with blamed("weightings", type(weighting), "loss"):
        loss = weighting.loss(outputs, labels, step)
    if not isinstance(loss, WeightingLoss):
        problem = f"returned {type(loss).__name__}, not an adaptive_exit.WeightingLoss(total, logs)"
    elif not isinstance(loss.total, torch.Tensor) or loss.total.dim() != 0:
        shape = list(loss.total.shape) if isinstance(loss.total, torch.Tensor) else type(loss.total).__name__
        problem = f"returned a total of {shape}, not a scalar tensor (reduce it, e.g. with .mean())"
    elif not torch.isfinite(loss.total.detach()):
        problem = f"returned a total of {float(loss.total.detach())} at step {step}, not a finite number"
    else:
        return loss
    raise PluginError(f"{describe('weightings', type(weighting))}: loss {problem}")


class Uniform(Weighting):
    """The mean of every exit's loss (plain joint training): cross-entropy, or squared error for regression."""

    name = "uniform"

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        return WeightingLoss(exit_losses(outputs.logits, labels).mean())


@hookimpl
def register_weightings(register):
    register(Uniform)
