"""What every Hugging Face adapter shares: the loaded model and tokenizer, saving, the model's own forward."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from ..backbones import Encoder
from ..errors import UsageError


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars off while loading."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.enable_progress_bar()
        transformers.logging.set_verbosity(level)


def dense_layer_flops(tokens: int, hidden: int, inner: int, attended: int | None = None,
                      mlp_matrices: int = 2) -> float:
    """Multiply-adds times two of a transformer layer: the four attention projections, ``mlp_matrices`` MLP
    matrices of ``hidden`` x ``inner`` (3 for a gated MLP), and scores and mixing over ``attended`` keys per token."""
    attended = tokens if attended is None else attended
    projections = tokens * (4 * hidden * hidden + mlp_matrices * hidden * inner)
    attention = 2 * tokens * attended * hidden
    return float(2 * (projections + attention))


class HuggingFaceEncoder(Encoder):
    """A ``transformers`` model run one layer at a time. Each architecture family subclasses it, names the
    ``model_types`` it serves, and implements ``embed``, ``context`` and ``run_layer`` as the model's own forward
    computes them."""

    model_types: ClassVar[tuple[str, ...]] = ()
    takes_token_types: ClassVar[bool] = True  # whether the model's forward takes token_type_ids

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.tokenizer = tokenizer
        self.num_layers = self.count_layers(model)
        self.hidden_size = model.config.hidden_size
        limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
        known = [limit for limit in limits if isinstance(limit, int) and limit < 1_000_000]
        self.max_positions = min(known) if known else None

    @property
    def architecture(self) -> str:
        """The model's ``model_type`` (bert, mpnet, ...)."""
        return self.model.config.model_type

    @staticmethod
    def count_layers(model: Any) -> int:
        """How many exits the model has: one per layer its forward runs."""
        return model.config.num_hidden_layers

    @classmethod
    def keep_layers(cls, config: Any, num_layers: int, source: str) -> None:
        """Cut ``config`` to its first ``num_layers`` layers before the model is built."""
        total = config.num_hidden_layers
        if num_layers > total:
            raise UsageError(f"--num-layers {num_layers} is more than the {total} layers of backbone '{source}'")
        config.num_hidden_layers = num_layers

    def token_types(self, token_type_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``token_type_ids`` as a keyword argument, where the model takes them and they are given."""
        return {"token_type_ids": token_type_ids} if self.takes_token_types and token_type_ids is not None else {}

    def own_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                    all_layers: bool = True) -> list[torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=all_layers,
                         **self.token_types(token_type_ids))
        if not all_layers:
            return [out.last_hidden_state]
        states = out.hidden_states[1:]
        per_exit = len(states) // self.num_layers  # ALBERT records each inner layer of a group
        return list(states[per_exit - 1::per_exit])

    def save(self, directory: Path) -> None:
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def layer_flops(self, tokens: int) -> float:
        return dense_layer_flops(tokens, self.hidden_size, self.model.config.intermediate_size)
