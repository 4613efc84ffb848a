"""COSEE: calibrated sample weighting and online signal calibration (He et al., AAAI 2025).

Registers the weighting ``cosee``. Uses only the public ``adaptive_exit`` API.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from adaptive_exit import ExitOutputs, Weighting, WeightingLoss, exit_cross_entropy, hookimpl, simulate_exits

__version__ = "0.1.0"


class CoseeOptions(BaseModel):
    """COSEE's hyper-parameters (defaults: the authors' training script)."""

    model_config = ConfigDict(extra="forbid")
    num_thresholds: int = Field(5, ge=1, description="K, thresholds drawn per training step")
    beta0: float = Field(10.0, ge=0, description="final sharpness of the sample weights (beta_t = beta0 * step / total)")
    alpha: float = Field(0.1, ge=0, description="weight of the online signal calibration loss")
    epsilon: float = Field(0.3, ge=0, description="margin between mean signals of wrong and correct samples")
    osc: bool = Field(True, description="use online signal calibration (--no-osc: the 'w/o OSC' ablation)")
    swm: bool = Field(True, description="use sample weighting (--no-swm: uniform weights, the 'w/o SWM' ablation)")


def beta_at(step: int, total_steps: int, beta0: float) -> float:
    """beta_t = beta0 · step / total_steps (Eq. 4): 0 at the first step, beta0 at the end."""
    return beta0 * step / max(total_steps, 1)


def weight_matrix(num_exits: int, beta: float) -> torch.Tensor:
    """``[M, M]``: row m* is softmax over exits m of -beta·|m - m*| (Eq. 3)."""
    index = torch.arange(num_exits, dtype=torch.float64)
    return torch.softmax(-beta * (index[:, None] - index[None, :]).abs(), dim=-1)


def sample_weights(scores: torch.Tensor, thresholds: torch.Tensor, exit_when: str, beta: float) -> torch.Tensor:
    """``[batch, M]``: each sample's weights over exits, averaged over the K simulated thresholds."""
    exit_index = simulate_exits(scores, thresholds, exit_when)
    weights = weight_matrix(scores.shape[0], beta).to(device=scores.device, dtype=torch.float32)
    return weights[exit_index].mean(0)


def weighted_cross_entropy(ce: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_n Σ_m w_n^(m) · CE_n^(m) for ``ce`` ``[M, batch]`` and ``weights`` ``[batch, M]`` (Eq. 2)."""
    return (ce * weights.t()).sum(0).mean()


def osc_loss(scores: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, epsilon: float,
             exit_when: str) -> torch.Tensor:
    """Online signal calibration (Eqs. 6-8): a hinge between the mean signals of correct and wrong samples,
    averaged over the internal exits whose batch has both (the authors' code); 0 if none has."""
    internal = scores[:-1]
    correct = (logits[:-1].argmax(-1) == labels).to(internal.dtype)
    wrong = 1.0 - correct
    n_correct, n_wrong = correct.sum(1), wrong.sum(1)
    usable = (n_correct > 0) & (n_wrong > 0)
    mean_correct = (internal * correct).sum(1) / n_correct.clamp(min=1)
    mean_wrong = (internal * wrong).sum(1) / n_wrong.clamp(min=1)
    rises_with_difficulty = exit_when in ("<", "<=")
    gap = mean_correct - mean_wrong if rises_with_difficulty else mean_wrong - mean_correct
    hinge = torch.relu(gap + epsilon)
    if not bool(usable.any()):
        return hinge.sum() * 0.0
    return (hinge * usable).sum() / usable.sum()


class Cosee(Weighting):
    """COSEE: cross-entropy weighted towards each sample's simulated exit, plus online signal calibration."""

    name = "cosee"
    Options = CoseeOptions

    def __init__(self, options=None, *, signal, num_exits, total_steps):
        super().__init__(options, signal=signal, num_exits=num_exits, total_steps=total_steps)
        self.threshold_range = tuple(float(b) for b in signal.bounds)
        self._seen = [math.inf, -math.inf]

    def loss(self, outputs: ExitOutputs, labels: torch.Tensor, step: int) -> WeightingLoss:
        opts = self.options
        scores = self.signal.score(outputs)
        internal = scores[:-1].detach()
        finite = internal[torch.isfinite(internal)]
        if finite.numel():
            self._seen = [min(self._seen[0], float(finite.min())), max(self._seen[1], float(finite.max()))]
        ce = exit_cross_entropy(outputs.logits, labels)
        beta = beta_at(step, self.total_steps, opts.beta0)
        if opts.swm:
            low, high = self.threshold_range
            thresholds = low + (high - low) * torch.rand(opts.num_thresholds, dtype=torch.float64)
            weights = sample_weights(scores, thresholds.to(scores.device), self.signal.exit_when, beta)
        else:
            weights = torch.full((labels.shape[0], self.num_exits), 1.0 / self.num_exits, device=ce.device)
        ce_loss = weighted_cross_entropy(ce, weights)
        calibration = (osc_loss(scores, outputs.logits, labels, opts.epsilon, self.signal.exit_when)
                       if opts.osc else ce_loss.new_zeros(()))
        total = ce_loss + opts.alpha * calibration
        return WeightingLoss(total, {"cosee_ce": float(ce_loss.detach()), "cosee_osc": float(calibration.detach()),
                                     "beta_t": beta})

    def end_epoch(self, epoch: int) -> None:
        low, high = self._seen
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            on_gpu = torch.distributed.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
            bounds = torch.tensor([-low, high], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(bounds, op=torch.distributed.ReduceOp.MAX)
            low, high = -float(bounds[0]), float(bounds[1])
        if math.isfinite(low) and math.isfinite(high) and high > low:
            self.threshold_range = (low, high)
        self._seen = [math.inf, -math.inf]


@hookimpl
def register_weightings(register):
    register(Cosee)
