"""COSEE: calibrated sample weighting and online signal calibration (He et al., AAAI 2025).

Registers the weighting ``cosee``. Uses only the public ``adaptive_exit`` API.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptive_exit import ExitOutputs, Weighting, WeightingLoss, exit_correct, exit_losses, hookimpl, simulate_exits

__version__ = "0.1.0"


# the options that depart from the published method, with the value that turns each off
DEPARTURES = {"mix": 0.0, "per_exit_norm": False, "quantile_thresholds": False, "warmup": 0.0, "distill": 0.0}


class CoseeOptions(BaseModel):
    """COSEE's hyper-parameters: the paper's from the authors' training script; the departures (mix, distill
    on by default; see the README) are all off under ``preset="paper"``."""

    model_config = ConfigDict(extra="forbid")
    preset: Literal["adaptive-exit", "paper"] = Field(
        "adaptive-exit", description="paper: the published method exactly (every departure off: --mix 0, --warmup 0, "
                                     "--distill 0, no per-exit normalisation, thresholds from the signal's range)")
    num_thresholds: int = Field(5, ge=1, description="K, thresholds drawn per training step")
    beta0: float = Field(10.0, ge=0, description="final sharpness of the sample weights (beta_t = beta0 * step / total)")
    alpha: float = Field(0.1, ge=0, description="weight of the online signal calibration loss")
    epsilon: float = Field(0.3, ge=0, description="margin between mean signals of wrong and correct samples")
    osc: bool = Field(True, description="use online signal calibration (--no-osc: the 'w/o OSC' ablation)")
    swm: bool = Field(True, description="use sample weighting (--no-swm: uniform weights, the 'w/o SWM' ablation)")
    mix: float = Field(0.6, ge=0, le=1, description="weights (1 - mix)·COSEE + mix/M: every exit keeps at least "
                                                    "mix/M of the weight (0: the paper)")
    per_exit_norm: bool = Field(False, description="rescale each exit's weights to mean 1/M over the batch: every "
                                                   "exit keeps its gradient scale, COSEE picks which samples it "
                                                   "learns from (off: the paper)")
    quantile_thresholds: bool = Field(False, description="draw each threshold at a random quantile of the batch's "
                                                         "internal-exit signals, from the first step (off: the "
                                                         "paper's range, [0, 1] in epoch 1)")
    warmup: float = Field(0.0, ge=0, lt=1, description="share of the training steps with beta_t = 0 (uniform "
                                                       "weights); beta_t then rises linearly to beta0 (0: the paper)")
    distill: float = Field(1.0, ge=0, description="scale of a distillation loss from the final exit into each "
                                                  "internal exit, per sample weighted by how far COSEE's weight "
                                                  "fell below 1/M (0: the paper)")
    log_every: int = Field(10, ge=0, description="log each exit's share of the weight and of the simulated exits "
                                                 "every N steps (0: never)")

    @model_validator(mode="after")
    def _paper_preset(self) -> "CoseeOptions":
        if self.preset == "paper":
            given = sorted(k for k in DEPARTURES if k in self.model_fields_set and getattr(self, k) != DEPARTURES[k])
            if given:
                raise ValueError(f"--preset paper is the published method; drop --{given[0].replace('_', '-')}")
            for key, off in DEPARTURES.items():
                setattr(self, key, off)
        return self


def beta_at(step: int, total_steps: int, beta0: float, warmup: float = 0.0) -> float:
    """beta_t = beta0 · step / total_steps (Eq. 4): 0 at the first step, beta0 at the end; with ``warmup`` w,
    0 for the first w of the steps, then rising linearly to beta0."""
    progress = step / max(total_steps, 1)
    return beta0 * max(0.0, progress - warmup) / (1.0 - warmup)


def weight_matrix(num_exits: int, beta: float) -> torch.Tensor:
    """``[M, M]``: row m* is softmax over exits m of -beta·|m - m*| (Eq. 3)."""
    index = torch.arange(num_exits, dtype=torch.float64)
    return torch.softmax(-beta * (index[:, None] - index[None, :]).abs(), dim=-1)


def sample_weights(scores: torch.Tensor, thresholds: torch.Tensor, exit_when: str, beta: float) -> torch.Tensor:
    """``[batch, M]``: each sample's weights over exits, averaged over the K simulated thresholds."""
    exit_index = simulate_exits(scores, thresholds, exit_when)
    weights = weight_matrix(scores.shape[0], beta).to(device=scores.device, dtype=torch.float32)
    return weights[exit_index].mean(0)


def thresholds_at_quantiles(scores: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """The given quantiles (in [0, 1]) of the finite values of ``scores``, as thresholds (float64)."""
    finite = scores[torch.isfinite(scores)].double()
    if finite.numel() == 0:
        return torch.full_like(quantiles, math.nan, dtype=torch.float64)
    return torch.quantile(finite, quantiles.to(finite.device, torch.float64))


def adjust_weights(weights: torch.Tensor, mix: float, per_exit_norm: bool) -> torch.Tensor:
    """``[batch, M]`` weights mixed with uniform ones, ``(1 - mix)·w + mix/M``, then, with ``per_exit_norm``,
    each exit's column rescaled to mean 1/M."""
    num_exits = weights.shape[1]
    weights = (1.0 - mix) * weights + mix / num_exits
    if per_exit_norm:
        weights = weights / (num_exits * weights.mean(0, keepdim=True).clamp(min=1e-12))
    return weights


def exit_shares(weights: torch.Tensor, exit_index: torch.Tensor | None) -> dict[str, float]:
    """Each exit's share of the cross-entropy weight (``cosee_weight/exit_k``) and of the simulated exits
    (``cosee_exits/exit_k``, from the ``[K, batch]`` exit indices, if any)."""
    num_exits = weights.shape[1]
    weight = weights.sum(0) / weights.sum()
    shares = {f"cosee_weight/exit_{m + 1}": float(weight[m]) for m in range(num_exits)}
    if exit_index is not None:
        counts = torch.bincount(exit_index.flatten(), minlength=num_exits).double() / exit_index.numel()
        shares.update({f"cosee_exits/exit_{m + 1}": float(counts[m]) for m in range(num_exits)})
    return shares


def distillation_loss(logits: torch.Tensor, weights: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """(1/N) Σ_n Σ_{m<M} max(0, 1/M - w_n^(m)) · KL(p_n^(M) ‖ p_n^(m)) for ``logits`` ``[M, batch, classes]`` and
    ``weights`` ``[batch, M]``: each internal exit learns the final exit's (detached) distribution from the
    samples whose loss weight COSEE lowered below uniform. For ``regression`` the KL term is the squared
    distance (y_n^(M) - y_n^(m))² between the single outputs."""
    num_exits = logits.shape[0]
    if regression:
        values = logits[..., 0].float()
        gap = (values[-1].detach() - values[:-1]) ** 2
    else:
        teacher = torch.log_softmax(logits[-1].detach().float(), dim=-1)
        students = torch.log_softmax(logits[:-1].float(), dim=-1)
        gap = (teacher.exp() * (teacher - students)).sum(-1)
    deficit = (1.0 / num_exits - weights[:, :-1].t()).clamp(min=0)
    return (gap * deficit).sum(0).mean()


def weighted_cross_entropy(ce: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_n Σ_m w_n^(m) · CE_n^(m) for ``ce`` ``[M, batch]`` and ``weights`` ``[batch, M]`` (Eq. 2)."""
    return (ce * weights.t()).sum(0).mean()


def osc_loss(scores: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, epsilon: float,
             exit_when: str) -> torch.Tensor:
    """Online signal calibration (Eqs. 6-8): a hinge between the mean signals of correct and wrong samples,
    averaged over the internal exits whose batch has both (the authors' code); 0 if none has. A NaN score (an exit
    the signal cannot judge, such as the first for a signal that compares exits) counts in neither group."""
    judged = torch.isfinite(scores[:-1])
    internal = torch.where(judged, scores[:-1], torch.zeros_like(scores[:-1]))
    right = exit_correct(logits[:-1], labels)
    correct = (right & judged).to(internal.dtype)
    wrong = (~right & judged).to(internal.dtype)
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
        ce = exit_losses(outputs.logits, labels)
        beta = beta_at(step, self.total_steps, opts.beta0, opts.warmup)
        thresholds = None
        if opts.swm:
            draws = torch.rand(opts.num_thresholds, dtype=torch.float64)
            if opts.quantile_thresholds:
                thresholds = thresholds_at_quantiles(internal, draws)
            else:
                low, high = self.threshold_range
                thresholds = (low + (high - low) * draws).to(scores.device)
            weights = sample_weights(scores, thresholds, self.signal.exit_when, beta)
            weights = adjust_weights(weights, opts.mix, opts.per_exit_norm)
        else:
            weights = torch.full((labels.shape[0], self.num_exits), 1.0 / self.num_exits, device=ce.device)
        ce_loss = weighted_cross_entropy(ce, weights)
        calibration = (osc_loss(scores, outputs.logits, labels, opts.epsilon, self.signal.exit_when)
                       if opts.osc else ce_loss.new_zeros(()))
        total = ce_loss + opts.alpha * calibration
        logs = {"cosee_ce": float(ce_loss.detach()), "cosee_osc": float(calibration.detach()), "beta_t": beta}
        if opts.distill:
            distillation = distillation_loss(outputs.logits, weights.detach(), labels.is_floating_point())
            total = total + opts.distill * distillation
            logs["cosee_distill"] = float(distillation.detach())
        if opts.log_every and step % opts.log_every == 0:
            simulated = None if thresholds is None else simulate_exits(scores.detach(), thresholds,
                                                                        self.signal.exit_when)
            logs.update(exit_shares(weights.detach(), simulated))
        return WeightingLoss(total, logs)

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

    def state_dict(self) -> dict[str, list[float]]:
        return {"threshold_range": list(self.threshold_range), "seen": list(self._seen)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.threshold_range = tuple(state["threshold_range"])
        self._seen = list(state["seen"])


@hookimpl
def register_weightings(register):
    register(Cosee)
