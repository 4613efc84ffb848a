"""DeBERTa (v1) and DeBERTa-v2/v3: disentangled attention over relative positions, which ``encoder`` builds once
per forward (the relative positions, the relative embeddings) and hands to every layer; v2's convolution after the
first layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..backbones import LayerContext
from .base import HuggingFaceEncoder, dense_layer_flops


@dataclass
class RelativeContext(LayerContext):
    """The mask as ``[batch, 1, seq, seq]`` (query and key both real), relative positions, relative embeddings."""

    pair_mask: Any = None
    relative_pos: Any = None
    rel_embeddings: Any = None


class Deberta(HuggingFaceEncoder):
    """Embeddings zeroed at padding, then each ``encoder.layer[i]`` with the pair mask and relative positions."""

    model_types = ("deberta",)

    @staticmethod
    def count_layers(model: Any) -> int:
        return len(model.encoder.layer)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> RelativeContext:
        encoder = self.model.encoder
        return RelativeContext(attention_mask, encoder.get_attention_mask(attention_mask),
                               encoder.get_rel_pos(hidden), encoder.get_rel_embedding())

    def run_layer(self, index: int, hidden: torch.Tensor, context: RelativeContext) -> torch.Tensor:
        return self.model.encoder.layer[index](hidden, context.pair_mask, relative_pos=context.relative_pos,
                                               rel_embeddings=context.rel_embeddings)[0]

    def layer_flops(self, tokens: int) -> float:
        """The dense layer, plus the relative embeddings' key and query projections and the content-to-position
        and position-to-content scores."""
        relative = self.model.encoder.rel_embeddings.num_embeddings if self.model.config.relative_attention else 0
        hidden = self.hidden_size
        positions = 2 * (2 * relative * hidden * hidden + 2 * tokens * relative * hidden)
        return dense_layer_flops(tokens, hidden, self.model.config.intermediate_size) + float(positions)


class DebertaV2(Deberta):
    """As DeBERTa, with v2's convolution (where the config has one) mixed into the first layer's output."""

    model_types = ("deberta-v2",)

    def run_layer(self, index: int, hidden: torch.Tensor, context: RelativeContext) -> torch.Tensor:
        out = super().run_layer(index, hidden, context)
        conv = self.model.encoder.conv
        if index == 0 and conv is not None:
            out = conv(hidden, out, context.attention_mask)
        return out
