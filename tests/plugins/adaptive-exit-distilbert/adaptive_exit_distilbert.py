"""An adaptive-exit backbone plugin: DistilBERT, run one layer at a time exactly as its own forward runs it.

The worked example of CONTRIBUTING.md ("Backbone plugins"). adaptive-exit's built-in backbone already runs
DistilBERT; this one shows what a backbone for another architecture needs, using only the public API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_exit import Backbone, Encoder, LayerContext, hookimpl


@dataclass
class DistilBertContext(LayerContext):
    """What DistilBERT's forward computes once and every layer reads: the mask in the layers' form."""

    layer_mask: Any = None


class DistilBertEncoder(Encoder):
    """``embeddings``, then ``transformer.layer[i]``, with the mask ``DistilBertModel.forward`` builds."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.num_layers = len(model.transformer.layer)
        self.hidden_size = model.config.dim
        self.max_positions = model.config.max_position_embeddings

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids)  # DistilBERT has no token types

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> DistilBertContext:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return DistilBertContext(attention_mask, mask)

    def run_layer(self, index: int, hidden: torch.Tensor, context: DistilBertContext) -> torch.Tensor:
        return self.model.transformer.layer[index](hidden, context.layer_mask)

    def own_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                    all_layers: bool = True) -> list[torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=all_layers)
        return list(out.hidden_states[1:]) if all_layers else [out.last_hidden_state]

    def save(self, directory: Path) -> None:
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def layer_flops(self, tokens: int) -> float:
        dim, inner = self.hidden_size, self.model.config.hidden_dim
        return 2.0 * (tokens * (4 * dim * dim + 2 * dim * inner) + 2 * tokens * tokens * dim)


class DistilBertBackbone(Backbone):
    """DistilBERT encoders from a local directory or a hub name."""

    name = "distilbert-plugin"

    def load(self, source: str, num_layers: int | None) -> DistilBertEncoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(source)
        if num_layers is not None:
            config.n_layers = num_layers
        return DistilBertEncoder(AutoModel.from_pretrained(source, config=config), AutoTokenizer.from_pretrained(source))

    def load_saved(self, directory: Path) -> DistilBertEncoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        model = AutoModel.from_config(AutoConfig.from_pretrained(directory))
        return DistilBertEncoder(model, AutoTokenizer.from_pretrained(directory))


@hookimpl
def register_backbones(register):
    register(DistilBertBackbone)
