"""adaptive-exit plugin: the ``margin`` exit signal, and ``drift`` for regression models.

The score of an exit is the difference between its two largest softmax probabilities, in [0, 1].
A confident exit has a large margin, so a sample leaves at the first exit whose margin is above
the threshold. ``drift`` is how far a regression exit's prediction lies from the mean of the
predictions so far. Uses only the public ``adaptive_exit`` API.
"""

from __future__ import annotations

from typing import Callable

import torch

from adaptive_exit import ExitOutputs, Signal, TemperatureOptions, hookimpl

__version__ = "0.1.0"


class Margin(Signal):
    """Top-1 minus top-2 softmax probability, in [0, 1]: exit when it is above the threshold."""

    name = "margin"
    exit_when = ">"
    bounds = (0.0, 1.0)
    Options = TemperatureOptions
    uses_history = False

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        """``[num_exits, batch]``: each exit's margin, from that exit's logits alone (so it is causal)."""
        probabilities = torch.softmax(outputs.logits.float() / self.options.temperature, dim=-1)
        if probabilities.shape[-1] < 2:
            return probabilities[..., 0]
        top = probabilities.topk(2, dim=-1).values
        return (top[..., 0] - top[..., 1]).clamp(0.0, 1.0)


class Drift(Signal):
    """|y_i - mean(y_1..y_i)| of a regression exit, in the target's units: exit when it is below the threshold."""

    name = "drift"
    exit_when = "<"
    tasks = ("regression",)

    bounds = property(Signal.distance_bounds)

    def score(self, outputs: ExitOutputs) -> torch.Tensor:
        """``[num_exits, batch]``: each exit's distance from the running mean of the exits up to it."""
        values = outputs.logits[..., 0].float()
        depth = torch.arange(1, values.shape[0] + 1, dtype=values.dtype, device=values.device)[:, None]
        drift = (values - values.cumsum(0) / depth).abs()
        drift[0] = float("nan")  # one prediction alone says nothing
        return drift


@hookimpl
def register_signals(register: Callable[[type], None]) -> None:
    """Register the ``margin`` and ``drift`` signals."""
    register(Margin)
    register(Drift)
