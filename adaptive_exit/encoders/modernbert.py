"""ModernBERT: rotary positions, global attention every few layers and sliding-window attention between, and a
final norm after the last layer.

Exits read what the model's own ``output_hidden_states`` gives: the residual stream after layers 1..L-1 (not
normed) and, after layer L, the final-normed state (its ``last_hidden_state``). So the last exit sees what a
ModernBERT classifier sees, and every exit's input is checked against the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..backbones import LayerContext
from .base import HuggingFaceEncoder, dense_layer_flops


@dataclass
class RotaryContext(LayerContext):
    """Per attention type ('full_attention', 'sliding_attention'): the mask in the layers' form, and the rotary
    (cos, sin) tables."""

    layer_masks: dict[str, Any] = field(default_factory=dict)
    rotary: dict[str, Any] = field(default_factory=dict)


class ModernBert(HuggingFaceEncoder):
    """Normed token embeddings, then ``layers[i]`` with its attention type's mask and rotary tables; the final norm
    is part of the last layer."""

    model_types = ("modernbert",)
    takes_token_types = False

    @staticmethod
    def count_layers(model: Any) -> int:
        return len(model.layers)

    @classmethod
    def keep_layers(cls, config: Any, num_layers: int, source: str) -> None:
        super().keep_layers(config, num_layers, source)
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:num_layers]

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> RotaryContext:
        from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

        config = self.model.config
        arguments = {"config": config, "inputs_embeds": hidden, "attention_mask": attention_mask}
        masks = {"full_attention": create_bidirectional_mask(**arguments),
                 "sliding_attention": create_bidirectional_sliding_window_mask(**arguments)}
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        rotary = {kind: self.model.rotary_emb(hidden, positions, kind) for kind in set(config.layer_types)}
        return RotaryContext(attention_mask, masks, rotary)

    def run_layer(self, index: int, hidden: torch.Tensor, context: RotaryContext) -> torch.Tensor:
        layer = self.model.layers[index]
        out = layer(hidden, attention_mask=context.layer_masks[layer.attention_type],
                    position_embeddings=context.rotary[layer.attention_type])
        return self.model.final_norm(out) if index == self.num_layers - 1 else out

    def layer_flops(self, tokens: int) -> float:
        """A gated MLP; a sliding-window layer attends to at most the window around each token (averaged over the
        layers, which alternate)."""
        config = self.model.config
        sliding = sum(kind == "sliding_attention" for kind in config.layer_types[:self.num_layers])
        window = min(tokens, 2 * config.sliding_window + 1)
        attended = (sliding * window + (self.num_layers - sliding) * tokens) / self.num_layers
        return dense_layer_flops(tokens, self.hidden_size, config.intermediate_size, attended, mlp_matrices=3)
