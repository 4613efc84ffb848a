"""BERT and the encoders built like it (RoBERTa, XLM-R, ELECTRA, CamemBERT, ERNIE, MobileBERT, MiniLM): embeddings,
then ``encoder.layer[i]`` with the attention mask in the form the attention implementation takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..backbones import LayerContext
from ..errors import UsageError
from .base import HuggingFaceEncoder


@dataclass
class MaskContext(LayerContext):
    """The ``[batch, seq]`` mask and the same in the layers' form (None: no padding, so no mask)."""

    layer_mask: Any = None


def layer_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The bidirectional attention mask as the model's own forward builds it for its attention implementation."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


class BertFamily(HuggingFaceEncoder):
    """Embeddings (and ELECTRA's projection), then each ``encoder.layer[i]`` with the attention mask."""

    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "mobilebert")

    def __init__(self, model: Any, tokenizer: Any):
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            from . import supported_types

            raise UsageError(f"backbone of type '{model.config.model_type}' has no adapter here and is not built like "
                             f"BERT (embeddings + encoder.layer); supported types: {supported_types()}; for another, "
                             f"write a backbone plugin (CONTRIBUTING.md, 'Backbone plugins')")
        super().__init__(model, tokenizer)

    @staticmethod
    def count_layers(model: Any) -> int:
        return len(model.encoder.layer)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embeddings(input_ids=input_ids, **self.token_types(token_type_ids))
        project = getattr(self.model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> MaskContext:
        return MaskContext(attention_mask, layer_mask(self.model.config, hidden, attention_mask))

    def run_layer(self, index: int, hidden: torch.Tensor, context: MaskContext) -> torch.Tensor:
        out = self.model.encoder.layer[index](hidden, attention_mask=context.layer_mask)
        return out[0] if isinstance(out, tuple) else out
