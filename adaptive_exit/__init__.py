"""adaptive-exit: early-exit transformer encoders with pluggable signals, weightings, backbones and datasets.

This module is the public API that plugins use; ``adaptive_exit.testing`` holds checks for plugins' own tests.
"""

from .aliases import resolve_source
from .backbones import Backbone, Encoder, LayerContext
from .calibration import calibrate_model_dir, choose_threshold
from .data import DatasetSource, TaskData
from .errors import UsageError
from .evaluation import CurvePoint, EvaluationResult, sweep
from .exits import (ExitOutputs, exit_condition, exit_correct, exit_cross_entropy, exit_losses, exit_predictions,
                    layer_speedup, simulate_exits)
from .hookspecs import hookimpl
from .lifecycle import RunInfo
from .model import MultiExitModel
from .signals import NoOptions, Signal, TemperatureOptions
from .sweeps import ChildResult, Comparison
from .weighting import Weighting, WeightingLoss

__all__ = [
    "Backbone", "ChildResult", "Comparison", "CurvePoint", "DatasetSource", "Encoder", "EvaluationResult", "ExitOutputs",
    "LayerContext", "MultiExitModel", "NoOptions", "RunInfo", "Signal", "TaskData", "TemperatureOptions", "UsageError",
    "Weighting", "WeightingLoss", "calibrate_model_dir", "choose_threshold", "exit_condition", "exit_correct",
    "exit_cross_entropy", "exit_losses", "exit_predictions", "hookimpl", "layer_speedup", "resolve_source",
    "simulate_exits", "sweep",
]
