"""Checks for plugin authors' own test suites: does a signal, or a backbone, meet the engine's contract? (Public,
like the top-level ``adaptive_exit`` API.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from . import encoder_calls
from .backbones import Backbone, Encoder, LayerContext
from .errors import PluginError, UsageError
from .fidelity import PROBE_TEXTS, Fidelity
from .inference import exit_mismatches, mismatch_report, spread_thresholds
from .model import BACKBONE_DIR, WEIGHTS, MultiExitModel, read_weights
from .plugins import class_problem
from .signals import Entropy, Signal, checked_score

BATCH_SIZES = (1, 7, 32)


class TinyEncoder(Encoder):
    """A random encoder small enough for unit tests: token embeddings, then per layer a residual tanh of a linear
    map of each token plus the mean of the sample's real tokens (so padding is masked, as in a real encoder)."""

    def __init__(self, num_layers: int = 4, hidden_size: int = 16, vocab_size: int = 100):
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.tokenizer = None
        self.embedding = torch.nn.Embedding(vocab_size, hidden_size)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(hidden_size, hidden_size) for _ in range(num_layers))

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)

    def run_layer(self, index: int, hidden: torch.Tensor, context: LayerContext) -> torch.Tensor:
        mask = context.attention_mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return hidden + torch.tanh(self.layers[index](hidden + mean))


def tiny_model(num_layers: int = 4, num_labels: int = 3, hidden_size: int = 16, seed: int = 0) -> MultiExitModel:
    """A random ``MultiExitModel`` on a ``TinyEncoder``, in eval mode, whose exits range from unsure to confident."""
    torch.manual_seed(seed)
    model = MultiExitModel(TinyEncoder(num_layers, hidden_size), {"pooling": "mean", "dropout": 0.0,
                                                                 "num_labels": num_labels})
    for head in model.heads:
        head.classifier.weight.data *= 8.0
    return model.eval()


def tiny_batch(size: int = 32, max_length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``size`` random samples of 1 to ``max_length`` tokens, padded."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_length + 1, (size,), generator=generator)
    mask = (torch.arange(max_length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 100, (size, max_length), generator=generator) * mask
    return {"input_ids": ids, "attention_mask": mask}


def cut(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` in batches of ``size`` samples, each trimmed to its longest sample (as a loader pads them)."""
    lengths = batch["attention_mask"].sum(1)
    return [{k: v[start:start + size, :int(lengths[start:start + size].max())] for k, v in batch.items()}
            for start in range(0, len(lengths), size)]


def check_signal(signal_cls: type[Signal], options: dict[str, Any] | None = None, *, num_layers: int = 4,
                 num_labels: int = 3, seed: int = 0, task: str = "classification") -> None:
    """Raise AssertionError unless ``signal_cls`` meets the signal contract on a tiny random model.

    The class must pass the registration checks (a ``Signal`` subclass with a name, a valid ``exit_when`` and a
    pydantic ``Options``), ``score`` must return a floating ``[exits, batch]`` tensor, and real early exit must
    send every sample out at the layer the all-exits simulation says, at batch sizes 1, 7 and 32 (streamed as
    ``predict`` streams them) and a dozen thresholds from the signal's own grid. That fails for a score that reads
    a later exit or other samples, and for a signal that declares ``uses_history`` wrongly. ``options`` are the
    signal's options (default: its defaults). ``task`` 'regression' checks it on a model with one output per exit
    (targets in -4..4).
    """
    problem = class_problem("signals", signal_cls)
    if problem is not None:
        raise AssertionError(f"{signal_cls!r} {problem}")
    if task not in signal_cls.tasks:
        raise AssertionError(f"{signal_cls!r} declares tasks {signal_cls.tasks}, not {task!r}")
    num_labels = 1 if task == "regression" else num_labels
    model = tiny_model(num_layers, num_labels, seed=seed)
    signal = signal_cls(signal_cls.Options.model_validate(options or {}), num_exits=model.num_exits,
                        hidden_size=model.encoder.hidden_size, num_labels=num_labels).eval()
    signal.task, signal.target_range = task, ((-4.0, 4.0) if task == "regression" else None)
    batch = tiny_batch(max(BATCH_SIZES), seed=seed)
    try:
        with torch.no_grad():
            scores = checked_score(signal, model(batch["input_ids"], batch["attention_mask"]))
        thresholds = spread_thresholds(signal.thresholds(scores.double()).tolist(), 12)
        mismatches = [m for size in BATCH_SIZES for m in exit_mismatches(model, cut(batch, size), signal, thresholds)]
    except PluginError as exc:
        raise AssertionError(str(exc)) from exc
    if mismatches:
        raise AssertionError(mismatch_report(signal, mismatches))


def _sentences(count: int) -> list[str]:
    """``count`` probe sentences of lengths from one word to a few dozen."""
    words = " ".join(PROBE_TEXTS).split()
    return [" ".join(words[(3 * i) % len(words):][: 1 + (7 * i) % 40] or words[:1]) for i in range(count)]


def check_backbone(backbone_cls: type[Backbone], source: str, *, num_layers: int | None = None, num_labels: int = 3,
                   seed: int = 0) -> Fidelity:
    """Raise AssertionError unless ``backbone_cls`` meets the backbone contract on the encoder ``source``; return
    the fidelity report.

    The class must pass the registration checks (a ``Backbone`` subclass with a name); ``load(source, num_layers)``
    must give an ``Encoder`` with ``num_layers``, ``hidden_size`` and a tokenizer whose ``embed`` and ``run_layer``
    give ``[batch, seq, hidden]``; the fidelity check must pass (each layer equal to ``own_forward``, where the
    encoder has one, and a sample alone equal to the same sample in a padded batch); real early exit must send
    every sample out at the layer the all-exits simulation says, at batch sizes 1, 7 and 32 (streamed as ``predict``
    streams them); and ``save`` then ``load_saved`` (with the weights loaded back) must give the same outputs.
    """
    problem = class_problem("backbones", backbone_cls)
    if problem is not None:
        raise AssertionError(f"{backbone_cls!r} {problem}")
    try:
        with torch.no_grad():
            encoder = encoder_calls.checked_encoder(backbone_cls, backbone_cls().load(source, num_layers), "load")
            report = encoder_calls.require_fidelity(encoder, source)
            torch.manual_seed(seed)
            model = MultiExitModel(encoder, {"pooling": "mean", "dropout": 0.0, "num_labels": num_labels}).eval()
            for head in model.heads:  # spread the exits' confidence so that thresholds separate samples
                head.classifier.weight.data *= 40.0
            signal = Entropy(num_exits=model.num_exits, hidden_size=encoder.hidden_size, num_labels=num_labels).eval()
            texts = _sentences(max(BATCH_SIZES))
            batch = dict(encoder.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in batch.items()}
            full = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            thresholds = spread_thresholds(signal.thresholds(signal.score(full).double()).tolist(), 12)
            mismatches = [m for size in BATCH_SIZES for m in exit_mismatches(model, cut(batch, size), signal,
                                                                              thresholds)]
            if mismatches:
                first = mismatches[0]
                raise AssertionError(f"real early exit sends {len(mismatches)} sample(s) out at another layer than "
                                     f"the simulation (sample {first.sample} at threshold {first.threshold:.6g}: "
                                     f"layer {first.early_exit_layer}, simulated {first.simulated_layer}); the "
                                     f"context must follow the rows and the trimmed length it is built for")
            with tempfile.TemporaryDirectory() as directory:
                model.save_pretrained(directory)
                rebuilt = encoder_calls.checked_encoder(
                    backbone_cls, backbone_cls().load_saved(Path(directory) / BACKBONE_DIR), "load_saved")
                again = MultiExitModel(rebuilt, model.config).to(device).eval()
                again.load_state_dict(read_weights(Path(directory) / WEIGHTS))
            reloaded = again(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            difference = float((reloaded.logits - full.logits).abs().max())
            if difference > 1e-5:
                raise AssertionError(f"save then load_saved gives other outputs (logits differ by {difference:.3g}); "
                                     f"save must write everything load_saved needs to rebuild the same encoder")
    except UsageError as exc:
        raise AssertionError(str(exc)) from exc
    return report
