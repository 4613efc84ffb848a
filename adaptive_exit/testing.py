"""Checks for plugin authors' own test suites: does a signal meet the engine's contract? (Public, like the
top-level ``adaptive_exit`` API.)"""

from __future__ import annotations

from typing import Any

import torch

from .backbones import Encoder
from .errors import PluginError
from .inference import exit_mismatches, mismatch_report, spread_thresholds
from .model import MultiExitModel
from .plugins import class_problem
from .signals import Signal, checked_score

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

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return self.embedding(input_ids)

    def layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return attention_mask.to(dtype).unsqueeze(-1)

    def run_layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context = (hidden * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return hidden + torch.tanh(self.layers[index](hidden + context))


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


def check_signal(signal_cls: type[Signal], options: dict[str, Any] | None = None, *, num_layers: int = 4,
                 num_labels: int = 3, seed: int = 0, task: str = "classification") -> None:
    """Raise AssertionError unless ``signal_cls`` meets the signal contract on a tiny random model.

    The class must pass the registration checks (a ``Signal`` subclass with a name, a valid ``exit_when`` and a
    pydantic ``Options``), ``score`` must return a floating ``[exits, batch]`` tensor, and real early exit must
    send every sample out at the layer the all-exits simulation says, at batch sizes 1, 7 and 32 and a dozen
    thresholds from the signal's own grid. That fails for a score that reads a later exit or other samples, and
    for a signal that declares ``uses_history`` wrongly. ``options`` are the signal's options (default: its
    defaults). ``task`` 'regression' checks it on a model with one output per exit (targets in -4..4).
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
    lengths = batch["attention_mask"].sum(1)
    try:
        with torch.no_grad():
            scores = checked_score(signal, model(batch["input_ids"], batch["attention_mask"]))
        thresholds = spread_thresholds(signal.thresholds(scores.double()).tolist(), 12)
        mismatches = []
        for size in BATCH_SIZES:
            batches = []
            for start in range(0, len(lengths), size):
                width = int(lengths[start:start + size].max())
                batches.append({k: v[start:start + size, :width] for k, v in batch.items()})
            mismatches += exit_mismatches(model, batches, signal, thresholds)
    except PluginError as exc:
        raise AssertionError(str(exc)) from exc
    if mismatches:
        raise AssertionError(mismatch_report(signal, mismatches))
