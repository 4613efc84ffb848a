"""The threshold sweep: one all-exits pass, then metric, layer speed-up and exit counts for every threshold."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .exits import ExitOutputs, exit_predictions, simulate_exits
from .metrics import REGRESSION_EXTRAS, compute
from .plugins import blamed, describe
from .precision import Precision, default_device
from .signals import Signal, checked_score

SPEEDUP_MARKS = (1.5, 2.0, 3.0, 4.0)


@dataclass
class CurvePoint:
    """One threshold of the sweep."""

    threshold: float
    speedup: float
    metric: float
    exit_counts: list[int]
    risk: dict[str, float] | None = None  # with a delta: empirical risks and their upper confidence bounds


@dataclass
class EvaluationResult:
    """A sweep's curve, per-exit metric, area under the metric / layer speed-up curve and marks on it."""

    signal: str
    metric_name: str
    num_samples: int
    curve: list[CurvePoint]
    per_exit_metric: list[float]
    auc: float
    metric_at: dict[str, float | None]
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape printed by ``evaluate --json``."""
        return {
            "signal": self.signal,
            "metric_name": self.metric_name,
            "num_samples": self.num_samples,
            "curve": [asdict(point) for point in self.curve],
            "per_exit_metric": self.per_exit_metric,
            "auc": self.auc,
            "metric_at": self.metric_at,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationResult":
        """The result back from the shape ``to_dict`` gives."""
        curve = [CurvePoint(**point) for point in data["curve"]]
        return cls(data["signal"], data["metric_name"], data["num_samples"], curve, data["per_exit_metric"],
                   data["auc"], data["metric_at"], extra=data.get("extra", {}))

    def table(self, rows: int = 12) -> str:
        """A readable summary: a dozen curve points spread over the speed-up range, then the summary numbers."""
        num_exits = len(self.per_exit_metric)
        picked: list[CurvePoint] = []
        for target in np.linspace(1.0, num_exits, rows):
            best = min(self.curve, key=lambda p: (abs(p.speedup - target), -p.metric))
            if best not in picked:
                picked.append(best)
        picked.sort(key=lambda p: p.speedup)
        exits_header = " ".join(f"{i + 1:>5}" for i in range(num_exits))
        lines = [f"signal {self.signal}, {self.num_samples} samples, metric {self.metric_name}",
                 f"{'threshold':>12} {'speed-up':>9} {self.metric_name:>9}   samples leaving at exit {exits_header}"]
        for p in picked:
            counts = " ".join(f"{c:>5}" for c in p.exit_counts)
            lines.append(f"{p.threshold:>12.6g} {p.speedup:>8.2f}x {p.metric:>9.4f}   {' ' * 24}{counts}")
        per_exit = " ".join(f"{m:.4f}" for m in self.per_exit_metric)
        lines.append(f"per-exit {self.metric_name} (exit 1 -> {num_exits}): {per_exit}")
        for name in REGRESSION_EXTRAS:
            values = [self.extra.get(f"exit_{i + 1}_{name}") for i in range(num_exits)]
            if None not in values:
                lines.append(f"per-exit {name} (exit 1 -> {num_exits}): {' '.join(f'{v:.4f}' for v in values)}")
        marks = ", ".join(f"{k}x: {'n/a' if v is None else f'{v:.4f}'}" for k, v in self.metric_at.items())
        lines.append(f"AUC of {self.metric_name} over layer speed-up: {self.auc:.4f}    {self.metric_name} at {marks}")
        return "\n".join(lines)


@torch.no_grad()
def collect_outputs(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                    device: torch.device | str = "cpu", precision: Precision | None = None) -> tuple[ExitOutputs, torch.Tensor]:
    """Every exit's outputs (fp32) over all batches (model in eval mode), and the labels."""
    model.eval()
    precision = precision or Precision("fp32", device)
    logits, pooled, labels = [], [], []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with precision.autocast():
            out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits.append(out.logits.float().cpu())
        pooled.append(out.pooled.float().cpu())
        labels.append(batch["labels"].cpu())
    return ExitOutputs(torch.cat(logits, 1), torch.cat(pooled, 1)), torch.cat(labels)


def split_outputs(model: torch.nn.Module, dataset: Any, batch_size: int, device: torch.device | str = "cpu",
                  precision: Precision | None = None) -> tuple[ExitOutputs, torch.Tensor]:
    """``collect_outputs`` over a tokenized split, batched by length (less padding), in the split's order."""
    from .data import make_loader, token_lengths

    lengths = token_lengths(dataset)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    loader = make_loader(dataset, model.tokenizer, batch_size, sampler=order)
    outputs, labels = collect_outputs(model, loader, device, precision)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return ExitOutputs(outputs.logits[:, back], outputs.pooled[:, back]), labels[back]


def unique_curve(speedups: np.ndarray, metrics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique speed-ups in increasing order, with the mean metric of points sharing one."""
    unique, inverse = np.unique(np.round(speedups, 9), return_inverse=True)
    sums = np.bincount(inverse, weights=metrics)
    return unique, sums / np.bincount(inverse)


def summarize_curve(curve: list[CurvePoint], marks: Iterable[float] = SPEEDUP_MARKS) -> tuple[float, dict[str, float | None]]:
    """Area under the metric / layer-speed-up curve divided by its speed-up span (a mean metric), and the
    metric linearly interpolated at each mark (``None`` past the curve's range)."""
    xs, ys = unique_curve(np.array([p.speedup for p in curve]), np.array([p.metric for p in curve]))
    area = float(((ys[1:] + ys[:-1]) / 2 * np.diff(xs)).sum())
    auc = area / float(xs[-1] - xs[0]) if xs[-1] > xs[0] else float(ys[0])
    at = {f"{m:g}": (float(np.interp(m, xs, ys)) if xs[0] <= m <= xs[-1] else None) for m in marks}
    return auc, at


def sweep(outputs: ExitOutputs, labels: torch.Tensor, signal: Signal, metric_name: str = "accuracy",
          thresholds: torch.Tensor | None = None, delta: float | None = None) -> EvaluationResult:
    """Simulate every threshold at once on one all-exits pass; with ``delta`` (classification), each point also
    carries the accuracy-drop and disagreement risks and their upper confidence bounds at ``delta``."""
    device = next(signal.parameters(), torch.empty(0)).device
    with torch.no_grad():
        scores = checked_score(signal, ExitOutputs(outputs.logits.to(device), outputs.pooled.to(device))).double().cpu()
    if scores.shape[0] > 1 and torch.isnan(scores[:-1]).all():
        print(f"adaptive-exit: warning: {describe('signals', type(signal))} scored NaN for every sample at every exit "
              f"but the last: no sample leaves early", file=sys.stderr)
    if thresholds is None:
        with blamed("signals", type(signal), "thresholds"):
            thresholds = signal.thresholds(scores)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    num_exits, num_samples = scores.shape
    predictions = exit_predictions(outputs.logits, regression=labels.is_floating_point())
    exit_index = simulate_exits(scores, thresholds, signal.exit_when)
    chosen = predictions.gather(0, exit_index)
    counts = torch.nn.functional.one_hot(exit_index, num_exits).sum(1)
    speedups = num_exits * num_samples / (exit_index + 1).sum(1).double()
    curve = [
        CurvePoint(float(t), float(s), compute(metric_name, chosen[k], labels), counts[k].tolist())
        for k, (t, s) in enumerate(zip(thresholds, speedups))
    ]
    if delta is not None and not labels.is_floating_point():
        from .risk import risk_bounds

        for point, bounds in zip(curve, risk_bounds(chosen, predictions[-1], labels, delta)):
            point.risk = bounds
    per_exit = [compute(metric_name, predictions[i], labels) for i in range(num_exits)]
    auc, metric_at = summarize_curve(curve)
    extra = {f"exit_{i + 1}_{name}": compute(name, predictions[i], labels) for name in REGRESSION_EXTRAS
             for i in range(num_exits)} if labels.is_floating_point() else {}
    return EvaluationResult(signal.name, metric_name, num_samples, curve, per_exit, auc, metric_at, extra=extra)


def evaluate_model_dir(model_dir: str, signal: str | None = None, signal_options: dict[str, Any] | None = None,
                       dataset: str | None = None, split: str = "validation", thresholds: list[float] | None = None,
                       max_samples: int | None = None, batch_size: int = 64, track: bool = True,
                       command: str = "evaluate",
                       finish: Callable[[EvaluationResult, ExitOutputs, torch.Tensor, Signal], None] | None = None,
                       parent: Any = None, run_name: str | None = None, precision: str = "auto",
                       check_signal: bool = False, delta: float | None = None) -> EvaluationResult:
    """Sweep a saved model on a split, with its own signal and dataset unless others are named.

    ``check_signal`` also runs real early exit on the split at some of the sweep's thresholds and raises a
    PluginError if any sample leaves at another layer than the sweep says (``inference.check_early_exit``).
    ``finish``, if given, sees the result, the split's all-exits outputs and labels, and the signal before the
    trackers do (``calibrate`` picks its threshold there). ``delta``: each point of the sweep carries the risks'
    upper confidence bounds at ``delta``.
    ``parent`` (a ``RunInfo``) makes the run a child run in the parent's experiment; ``run_name`` names it.
    """
    from pydantic import ValidationError

    from .config import DataConfig, describe_validation_error, validate_options
    from .data import load_task, tokenize
    from .errors import UsageError
    from .inference import check_early_exit
    from .lifecycle import RunInfo, lifecycle
    from .model import MultiExitModel, chosen_signal_options, load_signal_weights, signal_for
    from .plugins import call_lifecycle, lookup

    model = MultiExitModel.from_pretrained(model_dir)
    trained = model.config
    signal_name = signal or trained["signal"]["name"]
    options = chosen_signal_options(trained["signal"], signal_name, signal_options)
    options = validate_options(lookup("signals", signal_name).cls.Options, options, "signal.options").model_dump()
    data_values = dict(trained["run"]["data"])
    if dataset and dataset != trained["dataset"]:
        data_values = {"dataset": dataset, "max_length": data_values["max_length"]}
    data_values.update(eval_split=split, max_eval_samples=max_samples)
    try:
        data_config = DataConfig.model_validate(data_values)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc, prefix="data")) from None
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    bad = next((t for t in thresholds or () if not np.isfinite(t)), None)
    if bad is not None:
        raise UsageError(f"invalid value for --thresholds: each should be a finite number (got {bad})")
    if delta is not None and not 0 < delta < 1:
        raise UsageError(f"--delta must be a probability between 0 and 1 (got {delta:g})")
    device = default_device()
    runs_in = Precision(precision, device)
    plugins = {"signal": lookup("signals", signal_name), "dataset": lookup("datasets", data_config.dataset),
               "backbone": lookup("backbones", trained["backbone_type"])}
    config = {"model_dir": str(model_dir), "signal": {"name": signal_name, "options": options},
              "data": data_config.model_dump(), "thresholds": thresholds, "precision": runs_in.name}
    described = {kind: {"name": signal_name if kind == "signal" else data_config.dataset if kind == "dataset"
                        else trained["backbone_type"], "plugin": entry.plugin, "version": entry.version}
                 for kind, entry in plugins.items()}
    run = RunInfo(command, config, described, experiment=parent.experiment if parent else data_config.dataset,
                  tracking=track, run_name=run_name or f"{command}-{signal_name}", parent=parent)
    with lifecycle(run):
        signal_obj = signal_for(model, signal_name, options)
        if signal_name == trained["signal"]["name"]:
            load_signal_weights(signal_obj, model_dir)
        signal_obj.to(device).eval()
        model.to(device)
        task = load_task(data_config)
        call_lifecycle("on_data_loaded", run=run, task=task, splits=(split,))
        trained_task = trained.get("task", "classification")
        if task.task != trained_task or task.num_outputs != trained["num_labels"]:
            raise UsageError(f"dataset '{data_config.dataset}' is {task.task} with {task.num_outputs} output(s) but "
                             f"the model was trained for {trained_task} with {trained['num_labels']}; evaluate on a "
                             f"dataset of the same task and labels")
        tokenized = tokenize(task, model.tokenizer, data_config.max_length, (split,))
        outputs, labels = split_outputs(model, tokenized[split], batch_size, device, runs_in)
        result = sweep(outputs, labels, signal_obj, task.metric,
                       None if thresholds is None else torch.tensor(thresholds, dtype=torch.float64), delta)
        if check_signal:
            check_early_exit(model, tokenized[split], signal_obj, [p.threshold for p in result.curve], batch_size,
                             runs_in)
        if finish is not None:
            finish(result, outputs, labels, signal_obj)
        call_lifecycle("on_evaluate_end", run=run, results=result)
    return result
