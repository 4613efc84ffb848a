"""Choosing a threshold on calibration data: the best metric at a target layer speed-up, the fastest within a metric
drop (point estimates), or the fastest whose risk is certified (``risk``)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import UsageError
from .evaluation import CurvePoint, EvaluationResult, evaluate_model_dir
from .exits import ExitOutputs
from .model import update_model_config
from .signals import Signal, checked_score, threshold_range

RISK_GRID = 1001  # thresholds tested, evenly spaced over the signal's range: fixed before the data are seen


def choose_threshold(result: EvaluationResult, target_speedup: float | None = None,
                     max_drop: float | None = None) -> CurvePoint:
    """The curve point with the best metric among those at least ``target_speedup`` fast, or (``max_drop``) the
    fastest whose metric is at most ``max_drop`` points (hundredths) below the full model's."""
    if (target_speedup is None) == (max_drop is None):
        raise UsageError("give exactly one of --target-speedup and --max-drop")
    speeds = [p.speedup for p in result.curve]
    if target_speedup is not None:
        reaching = [p for p in result.curve if p.speedup >= target_speedup]
        if not reaching:
            raise UsageError(f"no threshold reaches a layer speed-up of {target_speedup:g}x; the reachable range on "
                             f"this data is {min(speeds):.2f}x to {max(speeds):.2f}x")
        return max(reaching, key=lambda p: (p.metric, p.speedup))
    full = result.per_exit_metric[-1]
    within = [p for p in result.curve if p.metric >= full - max_drop / 100.0]
    return max(within, key=lambda p: (p.speedup, p.metric))


def calibration_record(result: EvaluationResult, point: CurvePoint, split: str, target_speedup: float | None,
                       max_drop: float | None) -> dict[str, Any]:
    """What a model directory stores under ``calibration``: the chosen threshold and how it was chosen."""
    return {"signal": result.signal, "threshold": point.threshold, "speedup": point.speedup, "metric": point.metric,
            "metric_name": result.metric_name, "full_metric": result.per_exit_metric[-1], "split": split,
            "target_speedup": target_speedup, "max_drop": max_drop}


def calibrate_model_dir(model_dir: str, target_speedup: float | None = None, max_drop: float | None = None,
                        signal: str | None = None, signal_options: dict[str, Any] | None = None,
                        dataset: str | None = None, split: str = "validation", max_samples: int | None = None,
                        track: bool = True, precision: str = "auto", max_risk: float | None = None,
                        delta: float = 0.1, risk: str = "accuracy-drop", texts: list[Any] | None = None,
                        input_name: str | None = None) -> dict[str, Any]:
    """Pick a threshold on ``split`` (or, for ``max_risk`` with the disagreement risk, on unlabelled ``texts`` read
    from ``input_name``) and store it in the model directory; returns what was stored.

    Exactly one goal: ``target_speedup`` or ``max_drop`` (point estimates on the split), or ``max_risk`` (points)
    certified with probability 1 - ``delta``. ``signal_options`` go over the options the model keeps for its
    signal."""
    if sum(goal is not None for goal in (target_speedup, max_drop, max_risk)) != 1:
        raise UsageError("give exactly one of --target-speedup, --max-drop and --max-risk")
    if target_speedup is not None and target_speedup < 1.0:
        raise UsageError(f"--target-speedup must be at least 1 (got {target_speedup:g})")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop must not be negative (got {max_drop:g})")
    if max_risk is not None:
        check_risk_goal(model_dir, risk, max_risk, delta, labelled=texts is None)
    if texts is not None:
        if max_risk is None:
            raise UsageError("--input (unlabelled texts) works with --max-risk and --risk disagreement only; the "
                             "other rules need a labelled split")
        stored = calibrate_on_texts(model_dir, texts, input_name or "input", max_risk, delta, risk, signal,
                                    signal_options, precision)
        update_model_config(model_dir, "calibration", stored)
        return stored
    stored: dict[str, Any] = {}

    def finish(result: EvaluationResult, outputs: ExitOutputs, labels: torch.Tensor, signal_obj: Signal) -> None:
        if max_risk is not None:
            stored.update(certify_outputs(outputs, labels, signal_obj, risk, max_risk, delta), split=split)
            result.extra.update(calibrated_threshold=stored["threshold"], calibrated_speedup=stored["speedup"],
                                calibrated_risk_bound=stored["certified_bound"])
        else:
            point = choose_threshold(result, target_speedup, max_drop)
            stored.update(calibration_record(result, point, split, target_speedup, max_drop))
            result.extra.update(calibrated_threshold=point.threshold, calibrated_speedup=point.speedup,
                                calibrated_metric=point.metric)
        update_model_config(model_dir, "calibration", stored)

    evaluate_model_dir(model_dir, signal=signal, signal_options=signal_options, dataset=dataset, split=split,
                       max_samples=max_samples, track=track, command="calibrate", finish=finish, precision=precision)
    return stored


def calibrate_on_texts(model_dir: str, texts: list[Any], input_name: str, max_risk: float, delta: float, risk: str,
                       signal: str | None, signal_options: dict[str, Any] | None, precision: str) -> dict[str, Any]:
    """Risk control on unlabelled texts (the same input formats as ``predict``): what ``calibrate`` stores."""
    from .inference import model_signal
    from .model import MultiExitModel
    from .precision import Precision, default_device

    runs_in = Precision(precision, default_device())
    model = MultiExitModel.from_pretrained(model_dir).to(runs_in.device)
    signal_obj = model_signal(model, signal, signal_options).to(runs_in.device)
    outputs = text_outputs(model, texts, runs_in)
    return {**certify_outputs(outputs, None, signal_obj, risk, max_risk, delta), "split": input_name}


@torch.no_grad()
def text_outputs(model: Any, texts: list[Any], precision: Any, batch_size: int = 64) -> ExitOutputs:
    """Every exit's outputs (fp32) for raw texts, in their order."""
    from .inference import text_columns

    if not texts:
        raise UsageError("no texts to calibrate on: give one text per line, or JSON lines with the dataset's text "
                         "fields")
    model.eval()
    columns = text_columns(list(texts), model.config["text_fields"])
    max_length = model.config["run"]["data"]["max_length"]
    logits, pooled = [], []
    for start in range(0, len(texts), batch_size):
        batch = model.tokenizer(*[c[start:start + batch_size] for c in columns], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(precision.device)
        with precision.autocast():
            out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits.append(out.logits.float().cpu())
        pooled.append(out.pooled.float().cpu())
    return ExitOutputs(torch.cat(logits, 1), torch.cat(pooled, 1))


def risk_grid(signal: Signal) -> torch.Tensor:
    """The thresholds that risk control tests, from the most conservative (no sample leaves early) to the most
    aggressive, evenly spaced over the signal's threshold range (the same for any data)."""
    low, high = threshold_range(signal)
    grid = torch.linspace(low, high, RISK_GRID, dtype=torch.float64)
    return grid if signal.exit_when in ("<", "<=") else grid.flip(0)


def check_risk_goal(model_dir: str, risk: str, max_risk: float, delta: float, labelled: bool) -> None:
    """A UsageError, before any work, for a risk-control request that cannot be met."""
    from .model import read_model_config
    from .risk import RISKS

    if risk not in RISKS:
        raise UsageError(f"unknown risk '{risk}'; use one of {', '.join(RISKS)}")
    if not 0 < max_risk < 100:  # NaN fails this too
        raise UsageError(f"--max-risk must be more than 0 and less than 100 points (got {max_risk:g})")
    if not 0 < delta < 1:
        raise UsageError(f"--delta must be a probability between 0 and 1 (got {delta:g})")
    if risk == "accuracy-drop" and not labelled:
        raise UsageError("the accuracy-drop risk needs labels, and --input has none; use --risk disagreement (no "
                         "labels needed), or calibrate on a labelled split without --input")
    if read_model_config(model_dir).get("task", "classification") == "regression":
        raise UsageError("risk control (--max-risk) is for classification models; it is not supported for "
                         "regression yet: use --max-drop or --target-speedup")


def certify_outputs(outputs: ExitOutputs, labels: torch.Tensor | None, signal: Signal, risk: str, max_risk: float,
                    delta: float) -> dict[str, Any]:
    """The most aggressive threshold whose ``risk`` is certified at most ``max_risk`` points with probability at least
    1 − ``delta``, from the all-exits ``outputs`` on calibration data (``labels``: None for unlabelled data); what
    ``calibrate`` stores, or a UsageError when no threshold can be certified (the request checked by
    ``check_risk_goal``)."""
    from .risk import certify, exits_and_answers, per_sample_losses, samples_needed, speedups

    with torch.no_grad():
        scores = checked_score(signal, outputs).double().cpu()
    grid = risk_grid(signal)
    exit_index, early, full = exits_and_answers(outputs.logits.cpu(), scores, grid, signal.exit_when)
    losses = per_sample_losses(early, full, None if labels is None else labels.cpu(), risk)
    epsilon = max_risk / 100.0
    found = certify(losses.sum(1).tolist(), losses.shape[1], speedups(exit_index, scores.shape[0]).tolist(),
                    grid.tolist(), epsilon, delta)
    if found.threshold is None:
        raise UsageError(f"no threshold can be certified: {found.samples} calibration samples are too few for a risk "
                         f"of at most {max_risk:g} points with probability {1 - delta:g} (even with no loss at all at "
                         f"least {samples_needed(epsilon, delta)} are needed, and more give tighter bounds); calibrate "
                         f"on more samples, or allow a larger --max-risk or --delta")
    measured = {}
    if labels is not None:
        chosen = found.passed - 1
        measured = {"metric_name": "accuracy", "metric": float((early[chosen] == labels.cpu()).double().mean()),
                    "full_metric": float((full == labels.cpu()).double().mean())}
    return {"signal": signal.name, "threshold": found.threshold, "speedup": found.speedup, "rule": "max-risk",
            "risk": risk, "max_risk": max_risk, "delta": delta, "empirical_risk": found.risk,
            "certified_bound": found.upper_bound, "samples": found.samples, "thresholds_passed": found.passed,
            "test": "exact binomial (Clopper-Pearson), fixed-sequence over thresholds", **measured}
