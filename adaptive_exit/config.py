"""The whole run's configuration: pydantic models, read from a YAML file and/or command-line flags."""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UsageError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelConfig(_Strict):
    backbone: str = Field("minilm-l6", description="local path, hub name, or the offline alias 'minilm-l6'")
    backbone_type: str = Field("huggingface", description="backbone plugin that loads it")
    num_layers: int | None = Field(None, ge=1, description="keep only the first N layers")
    pooling: Literal["mean", "cls"] = Field("mean", description="how exit heads pool the hidden states")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before each exit's classifier")


class DataConfig(_Strict):
    dataset: str = Field("movie-reviews", description="dataset plugin name (e.g. movie-reviews, snli, glue/sst2, csv)")
    max_length: int = Field(64, ge=8, le=4096, description="maximum tokens per sample")
    max_train_samples: int | None = Field(None, ge=1, description="use only the first N training samples")
    max_eval_samples: int | None = Field(None, ge=1, description="use only the first N evaluation samples")
    eval_split: Literal["validation", "test"] = Field("validation", description="split the evaluation sweep uses")
    train_file: str | None = Field(None, description="local csv/json/tsv training file")
    validation_file: str | None = Field(None, description="local validation file (else cut from train)")
    test_file: str | None = Field(None, description="local test file")
    text_column: str = Field("text", description="column with the text (local files)")
    text_pair_column: str | None = Field(None, description="column with the second text of a pair (local files)")
    label_column: str = Field("label", description="column with the label (local files)")
    drop_missing_labels: bool = Field(False, description="leave out rows of local files that have no label "
                                                         "(default: an error naming them)")
    task: Literal["classification", "regression"] | None = Field(
        None, description="local files: classification (class labels: whole numbers or names; the default) or "
                          "regression (numeric targets; metric: Pearson correlation); other datasets have their own")


class TrainConfig(_Strict):
    epochs: int = Field(1, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=1, description="samples per step (per process under torchrun)")
    lr: float = Field(5e-5, gt=0, description="encoder learning rate")
    head_lr: float = Field(1e-3, gt=0, description="exit heads' (and signal's) learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of steps with linear warm-up")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(42, description="random seed for data order, dropout and thresholds")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the device runs it natively (a CUDA GPU with bf16, a CPU with "
                            "AVX-512 BF16 or AMX), else fp32; fp16 (CUDA only) scales the loss")
    group_by_length: bool = Field(
        True, description="batch samples of similar length together (random mega-batches of 50 batches, each "
                          "sorted by length): far less padding, same random batch order")
    checkpoint_every: int | None = Field(
        None, ge=0, description="write a checkpoint (for --resume) every N steps; none: every 10 minutes of training; "
                                "0: never. The end of every epoch, before its evaluation, is always one")
    calibrate_speedup: float | None = Field(
        2.0, ge=1.0, description="after training, store the threshold with the best evaluation-split metric at this "
                                 "layer speed-up or more, as `calibrate --target-speedup` would (predict's default)")


class PluginChoice(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="log the run to MLflow")
    experiment: str | None = Field(None, description="MLflow experiment (default: the dataset name)")
    log_model: bool = Field(True, description="log the trained model as an MLflow pyfunc model")


class RunConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    signal: PluginChoice = Field(default_factory=lambda: PluginChoice(name="entropy"))
    weighting: PluginChoice = Field(default_factory=lambda: PluginChoice(name="uniform"))
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str | None = Field(None, description="where the trained model goes (default: outputs/<run>)")


# the flags of the commands beside the config sections' fields; a plugin option must not take one of these names
COMMAND_FLAGS = frozenset({
    "config", "signal", "weighting", "output_dir", "experiment", "no_track", "model_dir", "dataset", "split",
    "max_eval_samples", "json", "precision", "thresholds", "batch_size", "check_signal", "target_speedup",
    "max_drop", "max_risk", "delta", "risk", "input", "output", "threshold", "batch_sizes", "repeats", "debug", "help",
    "resume",
})


def flag_name(field: str) -> str:
    """The command-line flag of a field: ``num_steps`` -> ``--num-steps``."""
    return "--" + field.replace("_", "-")


def reserved_flag(field: str, annotation: Any) -> str | None:
    """The built-in flag that a plugin option named ``field`` would clash with, or None.

    A ``bool`` option also makes ``--no-FIELD``, so ``track`` clashes with ``--no-track``.
    """
    reserved = COMMAND_FLAGS | {name for section in (ModelConfig, DataConfig, TrainConfig)
                                for name in section.model_fields}
    if field in reserved:
        return flag_name(field)
    if annotation is bool and f"no_{field}" in reserved:
        return flag_name(f"no_{field}")
    return None


def option_from_text(text: str, annotation: Any) -> Any:
    """A plugin option's command-line text as pydantic takes it: ``none`` for an optional field is None, a list
    field takes comma-separated items, anything else stays text (pydantic converts it)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation):
        if text.strip().lower() == "none":
            return None
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    if typing.get_origin(annotation) in (list, tuple, set, frozenset):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def describe_validation_error(error: ValidationError, prefix: str = "", flags: dict[str, str] | None = None) -> str:
    """One line naming the first invalid field and why.

    With ``flags`` (field -> the flag that gave it) the field is named by its flag, as the user typed it; a
    required field nobody gave is named by the flag that would give it.
    """
    first = error.errors()[0]
    loc = first["loc"]
    if flags is not None and loc and (loc[0] in flags or first["type"] == "missing"):
        field = flags.get(str(loc[0]), flag_name(str(loc[0]))) + "".join(f"[{part}]" for part in loc[1:])
    else:
        field = ".".join(str(part) for part in (prefix, *loc) if part != "")
    if first["type"] == "missing":
        return f"{field} is required"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    return f"invalid value for {field or 'config'}: {message}{shown}"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values put in, recursing into nested dicts."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file '{path}' must hold a mapping (model:, data:, train:, ...)")
    return data


def build_config(values: dict[str, Any]) -> RunConfig:
    """A validated RunConfig, or a UsageError naming the invalid field."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def validate_options(options_model: type[BaseModel], values: dict[str, Any], where: str,
                     flags: dict[str, str] | None = None) -> BaseModel:
    """A plugin's options model filled from ``values``, or a UsageError naming the field (by its flag, for the
    fields in ``flags``: see ``describe_validation_error``). A float option given as inf or NaN is an error, whatever
    the model says (a default of inf stays allowed)."""
    try:
        options = options_model.model_validate(values)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc, prefix=where, flags=flags)) from None
    for name, info in options_model.model_fields.items():
        value = getattr(options, name)
        if isinstance(value, float) and not math.isfinite(value) and value != info.default:
            field = (flags or {}).get(name) or f"{where}.{name}"
            raise UsageError(f"invalid value for {field}: Input should be a finite number (got {value!r})")
    return options


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
