"""The baselines' training objectives: weighted average (PABEE), two stages (DeeBERT), alternating (BERxiT)."""

from __future__ import annotations

import torch

from adaptive_exit import ExitOutputs, Weighting, WeightingLoss, exit_losses


def weighted_average_loss(ce: torch.Tensor) -> torch.Tensor:
    """Σ_i i·L_i / Σ_i i over exits i = 1..M, where L_i is exit i's mean loss and ``ce`` is ``[M, batch]``."""
    depth = torch.arange(1, ce.shape[0] + 1, dtype=ce.dtype, device=ce.device)
    return (depth * ce.mean(1)).sum() / depth.sum()


class WeightedAverage(Weighting):
    """PABEE's objective: every exit's cross-entropy, weighted by its depth."""

    name = "weighted-average"

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        return WeightingLoss(weighted_average_loss(exit_losses(outputs.logits, labels)))


def final_exit_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The encoder's and the final classifier's parameters: what DeeBERT's first stage trains."""
    return [*model.encoder.parameters(), *model.heads[-1].parameters()]


def internal_exit_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The internal exit heads' parameters: what DeeBERT's second stage trains."""
    return [p for head in model.heads[:-1] for p in head.parameters()]


class TwoStage(Weighting):
    """DeeBERT's objective: final exit first, then the internal exits on a frozen encoder.

    The first half of the steps trains encoder and final classifier on the final exit's loss; the
    second half freezes them and trains the internal exits on the sum of their losses.
    """

    name = "two-stage"

    def stage(self, step: int) -> int:
        """1 for the first half of the training steps, 2 for the rest."""
        return 1 if step < self.total_steps // 2 else 2

    def start_step(self, model: torch.nn.Module, step: int) -> None:
        first = self.stage(step) == 1
        for parameter in final_exit_parameters(model):
            parameter.requires_grad_(first)
        for parameter in internal_exit_parameters(model):
            parameter.requires_grad_(not first)

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        stage = self.stage(step)
        if stage == 1:
            total = exit_losses(outputs.logits[-1:], labels)[0].mean()
        else:
            total = exit_losses(outputs.logits[:-1], labels).mean(1).sum()
        return WeightingLoss(total, {"stage": float(stage)})


class Alternating(Weighting):
    """BERxiT's alternating objective: even steps train on the final exit's loss, odd steps on all exits' mean."""

    name = "alternating"

    @staticmethod
    def all_exits(step: int) -> bool:
        """Whether step ``step`` uses the all-exits objective."""
        return step % 2 == 1

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        ce = exit_losses(outputs.logits, labels).mean(1)
        all_exits = self.all_exits(step)
        return WeightingLoss(ce.mean() if all_exits else ce[-1], {"all_exits_step": float(all_exits)})
