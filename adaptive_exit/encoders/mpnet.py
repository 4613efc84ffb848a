"""MPNet: BERT-like layers that add a relative position bias, which ``MPNetEncoder`` computes once per forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..backbones import LayerContext
from .base import HuggingFaceEncoder
from .bert import layer_mask


@dataclass
class PositionBiasContext(LayerContext):
    """The mask in the layers' form and the relative position bias ``[batch, heads, seq, seq]``."""

    layer_mask: Any = None
    position_bias: Any = None


class MPNet(HuggingFaceEncoder):
    """Embeddings (positions counted from the padding id, as RoBERTa), then each ``encoder.layer[i]`` with the mask
    and the position bias."""

    model_types = ("mpnet",)
    takes_token_types = False

    @staticmethod
    def count_layers(model: Any) -> int:
        return len(model.encoder.layer)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> PositionBiasContext:
        return PositionBiasContext(attention_mask, layer_mask(self.model.config, hidden, attention_mask),
                                   self.model.encoder.compute_position_bias(hidden))

    def run_layer(self, index: int, hidden: torch.Tensor, context: PositionBiasContext) -> torch.Tensor:
        return self.model.encoder.layer[index](hidden, context.layer_mask, context.position_bias)[0]
