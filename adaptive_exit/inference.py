"""Inference with a saved model: its signal and threshold, predict, and real early exit checked against the
all-exits simulation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from . import encoder_calls
from .early_exit import early_exit_stream
from .exits import simulate_exits
from .model import pooling_weights
from .precision import Precision, full_precision
from .signals import Signal, checked_score, threshold_range


@dataclass
class ExitMismatch:
    """A sample that real early exit sends out at another layer than the all-exits simulation (layers 1-based)."""

    sample: int
    threshold: float
    early_exit_layer: int
    simulated_layer: int


def spread_thresholds(thresholds: Iterable[float], count: int) -> torch.Tensor:
    """At most ``count`` of ``thresholds`` (sorted), evenly spaced by position, both ends included."""
    ordered = torch.tensor(sorted(set(thresholds)), dtype=torch.float64)
    if len(ordered) <= count:
        return ordered
    return ordered[torch.linspace(0, len(ordered) - 1, count).round().long().unique()]


@torch.no_grad()
def exit_mismatches(model: Any, batches: Iterable[dict[str, torch.Tensor]], signal: Signal, thresholds: torch.Tensor,
                    precision: Precision | None = None) -> list[ExitMismatch]:
    """Run each batch through all exits and, per threshold, all of them streamed through real early exit as
    ``predict`` streams them (layer calls refilled up to the largest batch's size): every sample (numbered across
    the batches) whose exit layer differs between the two."""
    batches = list(batches)
    if not batches:
        return []
    device = batches[0]["input_ids"].device
    runs_in = precision or Precision("fp32", device)
    simulated = []
    for batch in batches:
        with runs_in.autocast():
            full = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        with full_precision(device):
            simulated.append(simulate_exits(checked_score(signal, full), thresholds, signal.exit_when))
    expected = torch.cat(simulated, 1)
    call_size = max(batch["input_ids"].shape[0] for batch in batches)
    mismatches: list[ExitMismatch] = []
    for k, threshold in enumerate(thresholds.tolist()):
        with runs_in.autocast():
            early = early_exit_stream(model, batches, signal, threshold, call_size).exit_index
        for row in (early != expected[k]).nonzero().flatten().tolist():
            mismatches.append(ExitMismatch(row, threshold, int(early[row]) + 1, int(expected[k, row]) + 1))
    return mismatches


def mismatch_report(signal: Signal, mismatches: list[ExitMismatch]) -> str:
    """One line: which samples leave at another layer in real early exit than in the simulation, and why that is."""
    from .plugins import describe

    samples = sorted({m.sample for m in mismatches})
    shown = "; ".join(f"sample {m.sample} at threshold {m.threshold:.6g}: layer {m.early_exit_layer} in early exit, "
                      f"{m.simulated_layer} simulated" for m in mismatches[:3])
    given = "exits 1..i" if signal.uses_history else "exit i alone"
    return (f"{describe('signals', type(signal))} fails the early-exit check: {len(samples)} sample(s) leave at "
            f"another layer in real early exit than in the simulation ({shown}); the score of exit i may read exits "
            f"1..i only, never a later exit or another sample, and with uses_history = {signal.uses_history} early "
            f"exit gives it {given}")


def check_early_exit(model: Any, dataset: Any, signal: Signal, thresholds: Iterable[float], batch_size: int,
                     precision: Precision, count: int = 8) -> None:
    """Real early exit against the simulation on a tokenized split, at ``count`` of ``thresholds``; a PluginError
    naming the signal (``mismatch_report``) if any sample leaves at another layer."""
    from .data import make_loader
    from .errors import PluginError

    device = precision.device
    batches = ({k: v.to(device) for k, v in batch.items()} for batch in make_loader(dataset, model.tokenizer,
                                                                                      batch_size))
    mismatches = exit_mismatches(model, batches, signal, spread_thresholds(thresholds, count), precision)
    if mismatches:
        rounding = "" if precision.name == "fp32" else (
            f"; in {precision.name} a score close to the threshold can also be rounded across it: rerun with "
            f"--precision fp32 to tell the two apart")
        raise PluginError(mismatch_report(signal, mismatches) + rounding)


@torch.no_grad()
def final_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """The full model the engine's way: every layer, then only the final classifier."""
    encoder = model.encoder
    hidden, context = encoder_calls.start(encoder, input_ids, token_type_ids, attention_mask)
    for index in range(model.num_exits):
        hidden = encoder_calls.run_layer(encoder, index, hidden, context)
    weights = pooling_weights(attention_mask, model.pooling, hidden.dtype)
    return model.exit_output(model.num_exits - 1, hidden, weights)[1]


def model_signal(model: Any, name: str | None = None, options: dict[str, Any] | None = None) -> Signal:
    """The signal ``name`` (default: the model's own) for a loaded model, with its trained weights if any."""
    from .model import chosen_signal_options, load_signal_weights, signal_for

    trained = model.config["signal"]
    name = name or trained["name"]
    signal = signal_for(model, name, chosen_signal_options(trained, name, options))
    if name == trained["name"] and model.directory is not None:
        load_signal_weights(signal, model.directory)
    return signal.eval()


def chosen_threshold(model: Any, signal: Signal, given: float | None) -> float:
    """``given`` (``--threshold``), checked to be a finite number in the signal's ``threshold_range``; else the
    threshold ``adaptive-exit calibrate`` stored for this signal, or a UsageError saying how to get one."""
    from .errors import UsageError

    if given is not None:
        low, high = threshold_range(signal)
        if not low <= given <= high:  # NaN fails this too
            raise UsageError(f"--threshold {given} is outside the range of signal '{signal.name}' thresholds "
                             f"[{low:g}, {high:g}]; pass a threshold within it")
        return given
    calibration = model.config.get("calibration")
    signal_name = signal.name
    if not calibration or calibration["signal"] != signal_name:
        raise UsageError(f"no calibrated threshold for signal '{signal_name}' in this model; pass --threshold, or run "
                         f"`adaptive-exit calibrate MODEL_DIR --target-speedup 2` first")
    return float(calibration["threshold"])


def text_columns(items: list[Any], fields: list[str]) -> list[list[str]]:
    """Columns of text for the tokenizer: one list per text field."""
    from .errors import UsageError

    columns: list[list[str]] = [[] for _ in fields]
    for item in items:
        if isinstance(item, str):
            values = [item]
        elif isinstance(item, dict):
            missing = [f for f in fields if f not in item]
            if missing:
                raise UsageError(f"input {item!r} has no field {missing[0]!r}; this model reads {', '.join(fields)}")
            values = [item[f] for f in fields]
        else:
            values = list(item)
        if len(values) != len(fields):
            raise UsageError(f"this model reads {len(fields)} text(s) per sample ({', '.join(fields)}); got {item!r}")
        for column, value in zip(columns, values):
            column.append(str(value))
    return columns


@torch.no_grad()
def predict(model: Any, texts: list[Any], threshold: float | None = None, batch_size: int = 32,
            signal: str | None = None, signal_options: dict[str, Any] | None = None,
            precision: str = "auto") -> list[dict[str, Any]]:
    """Early-exit predictions for raw texts, in input order (sorted by length and streamed: ``early_exit_stream``)."""
    from .errors import UsageError

    if not texts:
        raise UsageError("no texts to predict: give one text per line, or JSON lines with the dataset's text fields")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1 (got {batch_size})")
    model.eval()
    device = next(model.parameters()).device
    runs_in = Precision(precision, device)
    signal_obj = model_signal(model, signal, signal_options).to(device)
    threshold = chosen_threshold(model, signal_obj, threshold)
    fields = model.config["text_fields"]
    max_length = model.config["run"]["data"]["max_length"]
    columns = text_columns(list(texts), fields)
    order = sorted(range(len(texts)), key=lambda i: sum(len(c[i]) for c in columns))

    def tokenized(start: int) -> dict[str, torch.Tensor]:
        chosen = order[start:start + batch_size]
        return dict(model.tokenizer(*[[c[i] for i in chosen] for c in columns], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt").to(device))

    with runs_in.autocast():  # once for all batches: autocast keeps its casts of the weights until it ends
        out = early_exit_stream(model, (tokenized(start) for start in range(0, len(order), batch_size)), signal_obj,
                                threshold, batch_size)
    return _answers(model, out, order)


def _answers(model: Any, out: Any, order: list[int]) -> list[dict[str, Any]]:
    """Each answer of ``out`` (an ``EarlyExitOutput`` of the texts in ``order``) as a dict, in input order."""
    labels = model.config["label_names"]
    regression = model.config.get("task", "classification") == "regression"
    values = out.logits.float()[:, 0] if regression else torch.softmax(out.logits.float(), dim=-1)
    values = values.cpu()
    if not bool(torch.isfinite(values).all()):
        from .errors import UsageError

        raise UsageError("the model's answers are not finite numbers (its weights hold NaN or inf); train it again")
    exit_layers = (out.exit_index.cpu() + 1).tolist()
    results: list[dict[str, Any]] = [{}] * len(order)
    for row, original in enumerate(order):
        if regression:
            results[original] = {"value": round(float(values[row]), 6), "exit_layer": exit_layers[row]}
            continue
        label_id = int(values[row].argmax())
        results[original] = {"label": labels[label_id], "label_id": label_id,
                             "probabilities": [round(float(p), 6) for p in values[row]],
                             "exit_layer": exit_layers[row]}
    return results
