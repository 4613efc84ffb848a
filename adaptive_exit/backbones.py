"""Encoder backbones: the base classes plugins subclass, and the built-in backbone of Hugging Face encoders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .errors import UsageError
from .hookspecs import hookimpl


@dataclass
class LayerContext:
    """What an encoder computes once per batch and every layer reads: ``attention_mask`` (``[batch, seq]``, 1 for a
    real token, 0 for padding) and, in subclasses, whatever else its layers take (the mask in their form, position
    bias, relative positions, rotary tables). Early exit asks ``Encoder.context`` for a new one for every new set of
    rows (samples left, or rows of other batches joined, right-padded with zero states), cut to their longest
    sample: so it must depend on nothing but the mask and the hidden states' shape, dtype and device."""

    attention_mask: torch.Tensor


class Encoder(torch.nn.Module):
    """A loaded encoder that the model runs one layer at a time.

    Set ``num_layers``, ``hidden_size``, ``tokenizer`` (what turns text into ``input_ids``) and, if there is a
    limit, ``max_positions``; implement ``embed``, ``run_layer`` and ``save``, and ``context`` where the layers
    need more than the ``[batch, seq]`` mask. ``own_forward`` (the model's own forward, the reference for the
    fidelity check and ``benchmark``'s plain baseline) and ``layer_flops`` are optional.
    """

    num_layers: int
    hidden_size: int
    tokenizer: Any
    max_positions: int | None = None  # the most tokens one input may have; None: no limit known

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[batch, seq, hidden]``: the input of the first layer."""
        raise NotImplementedError

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> LayerContext:
        """What every layer of this batch reads (see ``LayerContext``); by default the ``[batch, seq]`` mask alone."""
        return LayerContext(attention_mask)

    def run_layer(self, index: int, hidden: torch.Tensor, context: LayerContext) -> torch.Tensor:
        """Hidden states ``[batch, seq, hidden]`` after layer ``index`` (0-based), from those before it."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write what ``Backbone.load_saved`` needs to rebuild this encoder (config, tokenizer; the engine writes the
        weights)."""
        raise NotImplementedError

    def own_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                    all_layers: bool = True) -> list[torch.Tensor] | None:
        """The hidden states of every layer (``all_layers``; else a list of the last layer's alone) from the model's
        own forward, not layer by layer; None if there is none to compare with."""
        return None

    def layer_flops(self, tokens: int) -> float | None:
        """Multiply-adds times two of one layer over a sequence of ``tokens`` tokens, or None if unknown."""
        return None


class Backbone:
    """An encoder family: how to load one from a source, and how to rebuild one from a saved model. Instantiated
    with no arguments."""

    name: ClassVar[str] = ""

    def load(self, source: str, num_layers: int | None) -> Encoder:
        """The pretrained encoder named by ``source``, keeping the first ``num_layers`` layers (None: all)."""
        raise NotImplementedError

    def load_saved(self, directory: Path) -> Encoder:
        """The encoder's architecture from a directory written by ``Encoder.save`` (weights loaded after)."""
        raise NotImplementedError


class HuggingFace(Backbone):
    """Encoders loaded with ``transformers``: a local path, a hub name, or an offline alias (``minilm-l6``,
    ``mpnet-base``); each architecture through its adapter (``adaptive_exit.encoders``)."""

    name = "huggingface"

    def load(self, source: str, num_layers: int | None) -> Encoder:
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from .aliases import resolve_source
        from .encoders import adapter_for, quiet_transformers

        path = resolve_source(source)
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(path)
                adapter = adapter_for(config)
                if num_layers is not None:
                    adapter.keep_layers(config, num_layers, source)
                model = AutoModel.from_pretrained(path, config=config)
                tokenizer = AutoTokenizer.from_pretrained(path)
        except UsageError:
            raise
        except (OSError, ValueError, SafetensorError) as exc:
            where = "local directory" if os.path.isdir(path) else "not a local directory, and the model hub"
            raise UsageError(
                f"could not load backbone '{source}' ({where} did not provide it: "
                f"{str(exc).splitlines()[0]}); pass a local model directory, a reachable hub name, or 'minilm-l6'"
            ) from None
        return adapter(model, tokenizer)

    def load_saved(self, directory: Path) -> Encoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from .encoders import adapter_for, quiet_transformers

        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(directory)
                adapter = adapter_for(config)
                model = AutoModel.from_config(config)
                tokenizer = AutoTokenizer.from_pretrained(directory)
        except UsageError:
            raise
        except (OSError, ValueError) as exc:
            raise UsageError(f"the backbone files in '{directory}' cannot be read ({str(exc).splitlines()[0]}); "
                             f"restore them, or train the model again") from None
        return adapter(model, tokenizer)


@hookimpl
def register_backbones(register):
    register(HuggingFace)
