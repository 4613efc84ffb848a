"""The multi-exit model: a backbone with one exit head per layer, saved and loaded as a directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from . import encoder_calls
from .backbones import Encoder
from .errors import UsageError
from .exits import ExitOutputs
from .precision import as_fp32, full_precision
from .writes import write_atomically

MODEL_CONFIG = "adaptive_exit.json"
WEIGHTS = "model.safetensors"
SIGNAL_WEIGHTS = "signal.safetensors"
BACKBONE_DIR = "backbone"


def pooling_weights(attention_mask: torch.Tensor, pooling: str, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, 1, seq]`` weights that pool hidden states: the mean over real tokens ('mean') or the first ('cls')."""
    if pooling == "cls":
        weights = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        weights[:, 0] = 1.0
    else:
        weights = attention_mask.to(dtype)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)
    return weights.unsqueeze(1)


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One vector per sample from ``pooling_weights``."""
    return torch.bmm(weights, hidden).squeeze(1)


class ExitHead(torch.nn.Module):
    """Dropout and a linear classifier over a pooled hidden state."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training:
            pooled = self.dropout(pooled)
        return torch.nn.functional.linear(pooled, self.classifier.weight, self.classifier.bias)  # one module call


class MultiExitModel(torch.nn.Module):
    """A backbone with an exit head after every layer; the last layer's head is the final classifier.

    ``config`` is a plain dict saved beside the weights: backbone type and source, number of layers,
    labels, pooling, dropout, and the signal, weighting and dataset it was trained with.
    """

    def __init__(self, encoder: Encoder, config: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.directory: Path | None = None
        self.config = dict(config)
        self.config["num_layers"] = encoder.num_layers
        self.pooling = config["pooling"]
        self.heads = torch.nn.ModuleList(
            ExitHead(encoder.hidden_size, config["num_labels"], config["dropout"]) for _ in range(encoder.num_layers)
        )

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    def exit_output(self, index: int, hidden: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled state and logits of exit ``index`` for hidden states after its layer (``weights``: ``pooling_weights``).

        Both computed in fp32 whatever precision the layers ran in (autocast is off here): losses and exit
        signals are computed from them, and a bf16 rounding would move samples across a threshold.
        """
        with full_precision(hidden.device):
            pooled = pool(as_fp32(hidden), as_fp32(weights))
            return pooled, self.heads[index](pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> ExitOutputs:
        """All exits for every sample (training and evaluation sweeps)."""
        hidden, context = encoder_calls.start(self.encoder, input_ids, token_type_ids, attention_mask)
        weights = pooling_weights(attention_mask, self.pooling, hidden.dtype)
        pooled_all, logits_all = [], []
        for index in range(self.num_exits):
            hidden = encoder_calls.run_layer(self.encoder, index, hidden, context)
            pooled, logits = self.exit_output(index, hidden, weights)
            pooled_all.append(pooled)
            logits_all.append(logits)
        return ExitOutputs(logits=torch.stack(logits_all), pooled=torch.stack(pooled_all))

    def save_pretrained(self, directory: str | Path, signal: torch.nn.Module | None = None) -> Path:
        """Write config, weights, backbone files and (if it has parameters) the signal's weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        encoder_calls.save_encoder(self.encoder, directory / BACKBONE_DIR)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        if signal is not None and len(signal.state_dict()) > 0:
            save_file({k: v.contiguous() for k, v in signal.state_dict().items()}, str(directory / SIGNAL_WEIGHTS))
        write_json_atomically(directory / MODEL_CONFIG, self.config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MultiExitModel":
        """Load a model directory written by ``save_pretrained``, checked as at training (the fidelity check)."""
        directory = Path(directory)
        config = read_model_config(directory)
        model = cls(encoder_calls.load_saved_encoder(config["backbone_type"], directory / BACKBONE_DIR), config)
        model.load_state_dict(read_weights(directory / WEIGHTS))
        model.directory = directory
        model.eval()
        encoder_calls.require_fidelity(model.encoder, str(directory))
        return model

    def predict(self, texts: list[Any], threshold: float | None = None, batch_size: int = 32,
                signal: str | None = None, signal_options: dict[str, Any] | None = None,
                precision: str = "auto") -> list[dict[str, Any]]:
        """Early-exit predictions for raw texts (strings, or pairs / dicts for pair tasks).

        Each answer has ``label``, ``label_id``, ``probabilities`` and ``exit_layer`` (1-based); a regression
        model's has ``value`` and ``exit_layer``. The
        threshold defaults to the one stored by ``adaptive-exit calibrate``; ``signal_options`` go over the
        options the model keeps for its signal; ``precision`` is that of ``--precision`` (auto: bf16 where the CPU
        or GPU runs it natively).
        """
        from .inference import predict

        return predict(self, texts, threshold=threshold, batch_size=batch_size, signal=signal,
                       signal_options=signal_options, precision=precision)


def signal_for(model: "MultiExitModel", name: str, options: dict[str, Any]) -> Any:
    """The signal ``name`` with ``options`` for this model: its exits, hidden size, outputs, task and (regression)
    target range."""
    from .signals import build_signal

    return build_signal(name, options, num_exits=model.num_exits, hidden_size=model.encoder.hidden_size,
                        num_labels=model.config["num_labels"], task=model.config.get("task", "classification"),
                        target_range=model.config.get("target_range"))


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The config file of a model directory, or a UsageError if there is none."""
    config_path = Path(directory) / MODEL_CONFIG
    if not config_path.is_file():
        raise UsageError(f"'{directory}' is not a model directory (no {MODEL_CONFIG}); pass the --output-dir of a train run")
    return read_json(config_path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the project wrote (a model's config, its evaluation, a sweep's record), or a UsageError naming
    the file if it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"'{path}' is missing; restore it, or train the model again") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"'{path}' is damaged ({exc}); restore it, or train the model again") from None


def chosen_signal_options(trained: dict[str, Any], name: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """The options of signal ``name`` on a model trained with ``trained`` (``{"name", "options"}``): the trained
    options if it is the same signal, with ``given`` put over them."""
    options = dict(trained["options"]) if name == trained["name"] else {}
    options.update(given or {})
    return options


def update_model_config(directory: str | Path, key: str, value: Any) -> None:
    """Set one key of a saved model's config file."""
    path = Path(directory) / MODEL_CONFIG
    config = read_json(path)
    config[key] = value
    write_json_atomically(path, config)


def remove_saved_model(directory: str | Path) -> None:
    """Remove what ``save_pretrained`` writes into ``directory`` (after a save that failed half-way)."""
    directory = Path(directory)
    shutil.rmtree(directory / BACKBONE_DIR, ignore_errors=True)
    for name in (WEIGHTS, SIGNAL_WEIGHTS, MODEL_CONFIG):
        (directory / name).unlink(missing_ok=True)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file (a model's config, a sweep's record) atomically: whole or absent (``write_atomically``)."""
    write_atomically(path, lambda handle: handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def load_signal_weights(signal: torch.nn.Module, directory: str | Path) -> None:
    """Load a signal's trained parameters from a model directory, if it saved any."""
    path = Path(directory) / SIGNAL_WEIGHTS
    if path.is_file() and len(signal.state_dict()) > 0:
        signal.load_state_dict(read_weights(path))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of a model directory, or a UsageError naming the file if it is missing
    or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise UsageError(f"'{path}' cannot be read ({str(exc).splitlines()[0]}); restore it, or train the model "
                         f"again") from None
