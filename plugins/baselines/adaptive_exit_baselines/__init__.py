"""The classic early-exit baselines as adaptive-exit plugins: PABEE, DeeBERT, BERxiT, PCEE-BERT, static budget.

Registers the weightings ``weighted-average``, ``two-stage``, ``alternating`` and the signals
``patience`` (classification and regression), ``patience-confidence``, ``lte``, ``lte-regression``, ``static``.
Uses only the public ``adaptive_exit`` API.
"""

from __future__ import annotations

from adaptive_exit import hookimpl

from .signals import LearnToExit, LearnToExitRegression, Patience, PatienceConfidence, Static
from .weightings import Alternating, TwoStage, WeightedAverage

__version__ = "0.1.0"


@hookimpl
def register_signals(register):
    for cls in (Patience, PatienceConfidence, LearnToExit, LearnToExitRegression, Static):
        register(cls)


@hookimpl
def register_weightings(register):
    for cls in (WeightedAverage, TwoStage, Alternating):
        register(cls)
