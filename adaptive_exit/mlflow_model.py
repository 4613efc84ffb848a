"""The trained model as an MLflow pyfunc model, logged from code (nothing pickled): loadable with
``mlflow.pyfunc.load_model`` and servable, with this project packed as a wheel beside it for its environment."""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import math
import tempfile
import zipfile
from pathlib import Path
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


def log_model(model_dir: str, name: str = "model", expected_code: str | None = None) -> Any:
    """Log the saved model in ``model_dir`` to the active MLflow run as a pyfunc model called ``name``; a UsageError
    if the project's code on disk is no longer the one whose ``code_hash()`` is ``expected_code``."""
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
    with tempfile.TemporaryDirectory() as scratch:
        wheel = project_wheel(Path(scratch), expected_code)
        # the environment MLflow builds for the model installs the wheel, and through it the project's dependencies
        return mlflow.pyfunc.log_model(name=name, python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
                                       artifacts={"model": str(model_dir), "project": str(wheel)},
                                       signature=signature, pip_requirements=[f"artifacts/{wheel.name}"])


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _installed_metadata() -> importlib.metadata.Distribution:
    """The installed distribution's own metadata (a ``.dist-info``; a stale ``.egg-info`` in a source checkout on
    ``sys.path`` has no METADATA)."""
    from .errors import UsageError

    for dist in importlib.metadata.distributions(name="adaptive-exit"):
        if dist.read_text("METADATA"):
            return dist
    raise UsageError("adaptive-exit is not installed (no METADATA found), so the logged model cannot carry it; "
                     "install it (`pip install -e .`), or pass --config with `tracking: {log_model: false}`")


def _project_code() -> tuple[list[str], dict[str, bytes]]:
    """This project's packages (with the plugins it ships) and their Python files as they are on disk now, by
    their path in a wheel."""
    packages = (_installed_metadata().read_text("top_level.txt") or "adaptive_exit").split()
    code: dict[str, bytes] = {}
    for package in packages:
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            code[f"{package}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return packages, code


def _digest(code: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(name.encode() + data for name, data in code.items())).hexdigest()[:12]


def code_hash() -> str:
    """12 hex digits that change whenever the project's code on disk changes (the version tail of its wheel)."""
    return _digest(_project_code()[1])


def project_wheel(directory: Path, expected_code: str | None = None) -> Path:
    """This project as it runs here (the Python files of its packages, with the plugins it ships, and its
    metadata), packed into a wheel in ``directory``: what the logged model's environment installs, since no
    package index serves it. Its version carries a hash of the code (``0.1.0+<12 hex digits>``), so that an
    environment MLflow made for one model's code is not reused for another's. A UsageError if that hash is not
    ``expected_code`` (the code changed on disk since the process that trained the model started)."""
    dist = _installed_metadata()
    packages, code = _project_code()
    digest = _digest(code)
    if expected_code is not None and digest != expected_code:
        raise UsageError("the code of adaptive-exit changed on disk while this command ran, so the logged model "
                         "would run other code than the one that trained and evaluated it; train again with the "
                         "code unchanged to log it")
    version = f"{dist.version.split('+')[0]}+{digest}"
    metadata = "".join(f"Version: {version}\n" if line.startswith("Version:") else line
                       for line in (dist.read_text("METADATA") or "").splitlines(keepends=True))
    info = f"adaptive_exit-{version}.dist-info"
    files = dict(code)
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/entry_points.txt"] = (dist.read_text("entry_points.txt") or "").encode()
    files[f"{info}/top_level.txt"] = ("\n".join(packages) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: adaptive-exit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"adaptive_exit-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel
