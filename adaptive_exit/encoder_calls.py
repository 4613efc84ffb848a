"""The engine's calls into a backbone plugin and the encoders it loads, checked: an exception inside one becomes a
one-line error naming the plugin and the call, an output of the wrong kind or shape is refused the same way, and a
loaded encoder is used only once the fidelity check finds its layer path equal to its own forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backbones import Backbone, Encoder, LayerContext
from .errors import PluginError, UsageError
from .fidelity import Fidelity, encoder_device, measure, probe_batch
from .plugins import blamed, describe, lookup

BACKBONE_PLUGINS = "CONTRIBUTING.md, 'Backbone plugins'"


def _origin(encoder: Encoder) -> type:
    """The backbone class that loaded ``encoder`` (the encoder's own class if it was built directly)."""
    return getattr(encoder, "backbone_cls", type(encoder))


def _refuse(encoder: Encoder, problem: str) -> PluginError:
    return PluginError(f"{describe('backbones', _origin(encoder))}: {problem}")


def _checked_states(encoder: Encoder, what: str, states: Any, batch: int, seq: int) -> torch.Tensor:
    """``states`` if it is a floating ``[batch, seq, hidden]`` tensor, else a PluginError naming the call."""
    shape = (batch, seq, encoder.hidden_size)
    if not (isinstance(states, torch.Tensor) and states.is_floating_point() and tuple(states.shape) == shape):
        got = (f"a {states.dtype} tensor of shape {list(states.shape)}" if isinstance(states, torch.Tensor)
               else f"a {type(states).__name__}")
        raise _refuse(encoder, f"{what} returned {got}, not a floating tensor of shape [batch, seq, hidden] = "
                               f"{list(shape)}")
    return states


def start(encoder: Encoder, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
          attention_mask: torch.Tensor) -> tuple[torch.Tensor, LayerContext]:
    """The batch's embeddings and its layer context."""
    with blamed("backbones", _origin(encoder), "embed"):
        hidden = encoder.embed(input_ids, token_type_ids, attention_mask)
    hidden = _checked_states(encoder, "embed", hidden, *input_ids.shape)
    return hidden, context(encoder, hidden, attention_mask)


def context(encoder: Encoder, hidden: torch.Tensor, attention_mask: torch.Tensor) -> LayerContext:
    """The layer context for ``hidden`` and its ``[batch, seq]`` mask (again for every new set of rows in early exit)."""
    with blamed("backbones", _origin(encoder), "context"):
        made = encoder.context(hidden, attention_mask)
    if not isinstance(made, LayerContext) or made.attention_mask is not attention_mask:
        raise _refuse(encoder, f"context returned {type(made).__name__}, not an adaptive_exit.LayerContext holding "
                               f"the [batch, seq] attention mask it was given")
    return made


def run_layer(encoder: Encoder, index: int, hidden: torch.Tensor, layer_context: LayerContext) -> torch.Tensor:
    """The states after layer ``index``."""
    with blamed("backbones", _origin(encoder), "run_layer"):
        out = encoder.run_layer(index, hidden, layer_context)
    if out is hidden or isinstance(out, torch.Tensor) and out.shape == hidden.shape:
        return out
    return _checked_states(encoder, "run_layer", out, *hidden.shape[:2])


def _instance(backbone_type: str) -> tuple[type, Backbone]:
    cls = lookup("backbones", backbone_type).cls
    with blamed("backbones", cls, "__init__"):
        return cls, cls()


def checked_encoder(cls: type, encoder: Any, what: str) -> Encoder:
    """``encoder`` if it is an Encoder with a layer count, hidden size and tokenizer, marked as ``cls``'s and in eval
    mode (as transformers' ``from_pretrained`` gives a model)."""
    if not isinstance(encoder, Encoder):
        raise PluginError(f"{describe('backbones', cls)}: {what} returned {type(encoder).__name__}, not an "
                          f"adaptive_exit.Encoder")
    encoder.backbone_cls = cls
    for attribute in ("num_layers", "hidden_size"):
        value = getattr(encoder, attribute, None)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise _refuse(encoder, f"the encoder from {what} has {attribute} = {value!r}; set it to a whole number "
                                   f"of at least 1")
    if not callable(getattr(encoder, "tokenizer", None)):
        raise _refuse(encoder, f"the encoder from {what} has no tokenizer (set its attribute 'tokenizer' to what "
                               f"turns text into input_ids, e.g. transformers' AutoTokenizer)")
    return encoder.eval()


def fidelity_report(encoder: Encoder) -> Fidelity:
    """Probe the encoder's shapes (one-line errors naming the plugin), then measure its fidelity."""
    device = encoder_device(encoder)
    batch = {k: v.to(device) for k, v in probe_batch(encoder.tokenizer).items()}
    with torch.no_grad():
        hidden, layer_context = start(encoder, batch["input_ids"], batch.get("token_type_ids"),
                                      batch["attention_mask"])
        run_layer(encoder, 0, hidden, layer_context)
    return measure(encoder, batch)


def require_fidelity(encoder: Encoder, source: str) -> Fidelity:
    """The fidelity report of an encoder that passes the shape probe and the fidelity check; a UsageError saying why
    it is refused otherwise."""
    report = fidelity_report(encoder)
    if not report.ok:
        from .encoders import supported_types

        raise UsageError(f"backbone '{source}' (type {report.architecture}) is refused: {report.problem}; run "
                         f"layer by layer it would compute something else than its own forward. Supported types: "
                         f"{supported_types()}; for another, write a backbone plugin ({BACKBONE_PLUGINS}); "
                         f"`adaptive-exit check-backbone` shows each layer")
    return report


def load_encoder(backbone_type: str, source: str, num_layers: int | None, check: bool = True) -> Encoder:
    """The encoder ``source`` loaded by the backbone plugin ``backbone_type``, checked (``check``: with the
    fidelity check too)."""
    cls, backbone = _instance(backbone_type)
    with blamed("backbones", cls, "load"):
        encoder = checked_encoder(cls, backbone.load(source, num_layers), "load")
    if check:
        require_fidelity(encoder, source)
    return encoder


def load_saved_encoder(backbone_type: str, directory: Path) -> Encoder:
    """The encoder of a saved model, rebuilt by its backbone plugin (weights loaded after, then checked)."""
    cls, backbone = _instance(backbone_type)
    with blamed("backbones", cls, "load_saved"):
        return checked_encoder(cls, backbone.load_saved(directory), "load_saved")


def save_encoder(encoder: Encoder, directory: Path) -> None:
    """Let the encoder write what rebuilds it."""
    directory.mkdir(parents=True, exist_ok=True)
    with blamed("backbones", _origin(encoder), "save"):
        encoder.save(directory)
