"""ALBERT: small embeddings mapped to the hidden size, then one shared layer group applied once per layer; an exit
after each application."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from .base import HuggingFaceEncoder
from .bert import MaskContext, layer_mask


class Albert(HuggingFaceEncoder):
    """Layer ``i`` applies the layer group ``i // (layers / groups)``, as ``AlbertTransformer`` does."""

    model_types = ("albert",)

    @classmethod
    def keep_layers(cls, config: Any, num_layers: int, source: str) -> None:
        if config.num_hidden_groups > 1 and num_layers != config.num_hidden_layers:
            raise UsageError(f"--num-layers cannot cut backbone '{source}': its {config.num_hidden_layers} layers "
                             f"share {config.num_hidden_groups} layer groups, and fewer layers would apply them in "
                             f"another order; leave out --num-layers")
        super().keep_layers(config, num_layers, source)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embeddings(input_ids, **self.token_types(token_type_ids))
        return self.model.encoder.embedding_hidden_mapping_in(hidden)

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> MaskContext:
        return MaskContext(attention_mask, layer_mask(self.model.config, hidden, attention_mask))

    def run_layer(self, index: int, hidden: torch.Tensor, context: MaskContext) -> torch.Tensor:
        config = self.model.config
        group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
        return self.model.encoder.albert_layer_groups[group](hidden, context.layer_mask)

    def layer_flops(self, tokens: int) -> float:
        return super().layer_flops(tokens) * self.model.config.inner_group_num
