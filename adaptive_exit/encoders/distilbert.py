"""DistilBERT: embeddings without token types, then ``transformer.layer[i]``."""

from __future__ import annotations

from typing import Any

import torch

from .base import HuggingFaceEncoder, dense_layer_flops
from .bert import MaskContext, layer_mask


class DistilBert(HuggingFaceEncoder):
    """Word and position embeddings, then each ``transformer.layer[i]`` with the attention mask."""

    model_types = ("distilbert",)
    takes_token_types = False

    @staticmethod
    def count_layers(model: Any) -> int:
        return len(model.transformer.layer)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids)

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> MaskContext:
        return MaskContext(attention_mask, layer_mask(self.model.config, hidden, attention_mask))

    def run_layer(self, index: int, hidden: torch.Tensor, context: MaskContext) -> torch.Tensor:
        return self.model.transformer.layer[index](hidden, context.layer_mask)

    def layer_flops(self, tokens: int) -> float:
        return dense_layer_flops(tokens, self.hidden_size, self.model.config.hidden_dim)
