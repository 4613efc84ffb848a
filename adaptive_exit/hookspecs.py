"""The hooks a plugin can implement. Each hook's docstring is its documentation."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("adaptive_exit")
hookimpl = pluggy.HookimplMarker("adaptive_exit")


@hookspec
def register_signals(register: Callable[[type], None]) -> None:
    """Register exit signals: call ``register(cls)`` once per ``adaptive_exit.Signal`` subclass.

    The class's ``name`` is what ``--signal NAME`` selects.
    """


@hookspec
def register_weightings(register: Callable[[type], None]) -> None:
    """Register training weighting schemes: call ``register(cls)`` per ``adaptive_exit.Weighting`` subclass.

    The class's ``name`` is what ``--weighting NAME`` selects.
    """


@hookspec
def register_backbones(register: Callable[[type], None]) -> None:
    """Register encoder families: call ``register(cls)`` per ``adaptive_exit.Backbone`` subclass.

    The class's ``name`` is what ``--backbone-type NAME`` selects.
    """


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register data sources: call ``register(cls)`` per ``adaptive_exit.DatasetSource`` subclass.

    The class's ``name`` is what ``--dataset NAME`` selects; a name ending in ``/`` (such as
    ``glue/``) is a prefix and takes the rest of the argument (``glue/sst2``) as its subset.
    """


@hookspec
def on_run_start(run: Any) -> None:
    """A ``train``, ``evaluate``, ``calibrate`` or ``sweep`` run starts. ``run`` is an ``adaptive_exit.RunInfo``.

    Called in the main process only (rank 0 under ``torchrun``).
    """


@hookspec
def on_data_loaded(run: Any, task: Any, splits: tuple[str, ...]) -> None:
    """The run's data is loaded. ``task`` is an ``adaptive_exit.TaskData``; ``splits`` names the splits the run
    uses ('train' and the evaluation split for ``train``, the evaluated split otherwise)."""


@hookspec
def on_step_end(run: Any, step: int, logs: dict[str, float]) -> None:
    """An optimizer step ended. ``logs`` holds the loss, the learning rate and the weighting's own terms."""


@hookspec
def on_evaluate_end(run: Any, results: Any) -> None:
    """An evaluation sweep ended. ``results`` is an ``adaptive_exit.EvaluationResult``.

    ``results.epoch`` is the epoch number for the per-epoch check during training and ``None`` for the
    final sweep.
    """


@hookspec
def on_sweep_end(run: Any, comparison: Any) -> None:
    """A ``sweep`` ran all its child runs. ``comparison`` is an ``adaptive_exit.Comparison``.

    Called before ``on_run_end`` of the sweep's own run; each child run had its own lifecycle, with
    ``run.parent`` set to the sweep's ``RunInfo``.
    """


@hookspec
def on_run_end(run: Any, status: str, output_dir: str | None, error: str | None) -> None:
    """The command ended with ``status`` FINISHED, FAILED or KILLED; ``output_dir`` holds the saved model, if any;
    ``error`` is the first line of the error that ended it FAILED (None otherwise)."""
