"""Choosing a threshold on validation data: the best metric at a target layer speed-up, or the fastest within a drop."""

from __future__ import annotations

from typing import Any

from .errors import UsageError
from .evaluation import CurvePoint, EvaluationResult, evaluate_model_dir
from .model import update_model_config


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
                        track: bool = True, precision: str = "auto") -> dict[str, Any]:
    """Pick a threshold on ``split`` and store it in the model directory; returns what was stored.

    ``signal_options`` go over the options the model keeps for its signal."""
    if target_speedup is not None and target_speedup < 1.0:
        raise UsageError(f"--target-speedup must be at least 1 (got {target_speedup:g})")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop must not be negative (got {max_drop:g})")
    stored: dict[str, Any] = {}

    def finish(result: EvaluationResult) -> None:
        point = choose_threshold(result, target_speedup, max_drop)
        stored.update(calibration_record(result, point, split, target_speedup, max_drop))
        result.extra.update(calibrated_threshold=point.threshold, calibrated_speedup=point.speedup,
                            calibrated_metric=point.metric)
        update_model_config(model_dir, "calibration", stored)

    evaluate_model_dir(model_dir, signal=signal, signal_options=signal_options, dataset=dataset, split=split,
                       max_samples=max_samples, track=track, command="calibrate", finish=finish, precision=precision)
    return stored
