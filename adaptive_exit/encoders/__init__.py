"""Adapters that run a Hugging Face encoder one layer at a time as its own forward does, one module per
architecture family. A type without an adapter goes through the BERT-family path, and is used only if the
fidelity check at load time finds that path equal to the model's own forward."""

from __future__ import annotations

from typing import Any

from .albert import Albert
from .base import HuggingFaceEncoder, quiet_transformers
from .bert import BertFamily
from .deberta import Deberta, DebertaV2
from .distilbert import DistilBert
from .modernbert import ModernBert
from .mpnet import MPNet

ADAPTERS: dict[str, type[HuggingFaceEncoder]] = {
    model_type: adapter for adapter in (BertFamily, DistilBert, Albert, Deberta, DebertaV2, MPNet, ModernBert)
    for model_type in adapter.model_types
}


def supported_types() -> str:
    """The model types with an adapter, for messages."""
    return ", ".join(ADAPTERS)


def adapter_for(config: Any) -> type[HuggingFaceEncoder]:
    """The adapter for a ``transformers`` config's ``model_type``; the BERT-family path for a type without one."""
    return ADAPTERS.get(config.model_type, BertFamily)


__all__ = ["ADAPTERS", "HuggingFaceEncoder", "adapter_for", "quiet_transformers", "supported_types"]
