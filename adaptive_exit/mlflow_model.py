"""The trained model as an MLflow pyfunc model: loadable with ``mlflow.pyfunc.load_model`` and servable."""

from __future__ import annotations

import importlib.metadata
import math
from typing import Any

import mlflow
import pandas as pd

from .errors import UsageError
from .inference import model_signal
from .model import MultiExitModel
from .signals import threshold_range

INPUT_COLUMNS = ("text", "text_pair")


class EarlyExitPyfunc(mlflow.pyfunc.PythonModel):
    """Early-exit predictions for a DataFrame with a ``text`` column (and ``text_pair`` for pair tasks).

    Returns ``label``, ``probabilities`` and ``exit_layer`` (1-based) per row (a regression model: ``value`` and
    ``exit_layer``). The ``threshold`` parameter
    defaults to the threshold stored in the model (by ``train --calibrate-speedup`` or ``calibrate``).
    """

    def load_context(self, context: Any) -> None:
        self.model = MultiExitModel.from_pretrained(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        fields = self.model.config["text_fields"]
        wanted = INPUT_COLUMNS[:len(fields)]
        missing = [c for c in wanted if c not in model_input.columns]
        if missing:
            raise UsageError(f"input has no column {missing[0]!r}; this model reads the columns {', '.join(wanted)}")
        threshold = (params or {}).get("threshold")
        if threshold is not None and math.isnan(float(threshold)):
            threshold = None
        texts = model_input[list(wanted)].astype(str).values.tolist()
        answers = self.model.predict(texts, threshold=threshold)
        regression = self.model.config.get("task", "classification") == "regression"
        columns = ("value", "exit_layer") if regression else ("label", "probabilities", "exit_layer")
        return pd.DataFrame({column: [a[column] for a in answers] for column in columns})


def log_model(model_dir: str, name: str = "model") -> Any:
    """Log the saved model in ``model_dir`` to the active MLflow run as a pyfunc model called ``name``."""
    from mlflow.models import infer_signature

    model = MultiExitModel.from_pretrained(model_dir)
    example = pd.DataFrame({column: ["a short example"] for column in INPUT_COLUMNS[:len(model.config["text_fields"])]})
    calibration = model.config.get("calibration") or {}
    threshold = float(calibration.get("threshold", math.nan))
    wrapper = EarlyExitPyfunc()
    wrapper.model = model
    example_threshold = threshold if not math.isnan(threshold) else sum(threshold_range(model_signal(model))) / 2
    output = wrapper.predict(None, example, {"threshold": example_threshold})
    signature = infer_signature(example, output, params={"threshold": threshold})
    requirements = [f"adaptive-exit=={importlib.metadata.version('adaptive-exit')}"]
    return mlflow.pyfunc.log_model(name=name, python_model=EarlyExitPyfunc(), artifacts={"model": str(model_dir)},
                                   signature=signature, pip_requirements=requirements)
