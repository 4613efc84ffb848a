"""What a command tells the lifecycle hooks: the run's description, and its start and end."""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

from .plugins import call_lifecycle


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, schedulers and ``torchrun`` send), raised so a run ends KILLED like on Ctrl-C."""


_sigterm_received = False


def _raise_terminated(signum: int, frame: Any) -> None:
    global _sigterm_received
    _sigterm_received = True
    raise Terminated()


def _drop_ignored_terminated(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, Terminated):
        sys.__unraisablehook__(unraisable)


def terminate_on_sigterm() -> None:
    """Make SIGTERM raise ``Terminated`` in the main thread, so a run it stops ends KILLED. Where Python ignores
    that exception (it landed in a ``__del__`` or a weakref callback) no traceback is printed:
    ``raise_if_terminated`` raises it again at the next training step."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    sys.unraisablehook = _drop_ignored_terminated


def sigterm_received() -> bool:
    """Whether SIGTERM came: then any error that follows is its doing (its ``Terminated`` can surface as another
    exception, e.g. a ``RuntimeError`` when it lands inside a class being created during an import)."""
    return _sigterm_received


def raise_if_terminated() -> None:
    """Raise ``Terminated`` again if SIGTERM came: a signal that lands inside a ``__del__`` or a callback has its
    exception ignored by Python, and the work would go on."""
    if _sigterm_received:
        raise Terminated()


@dataclass
class RunInfo:
    """One ``train`` or ``evaluate`` command, as trackers see it.

    ``config`` is the nested run configuration; ``plugins`` maps each chosen plugin kind to
    ``{"name", "plugin", "version"}``; ``state`` is scratch space for trackers (the MLflow run id), kept in
    training checkpoints (so plain values only); ``parent`` is the ``sweep`` run a child run belongs to;
    ``resumed`` says that a training continues from a checkpoint, with ``state`` as its trackers left it.
    """

    command: str
    config: dict[str, Any]
    plugins: dict[str, dict[str, str]]
    experiment: str
    tracking: bool = True
    run_name: str | None = None
    parent: "RunInfo | None" = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    state: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def error_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name if it has none."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def lifecycle(run: RunInfo, active: bool = True) -> Iterator[dict[str, Any]]:
    """Call ``on_run_start`` now and ``on_run_end`` with FINISHED, FAILED (an exception) or KILLED (Ctrl-C or
    SIGTERM, once ``terminate_on_sigterm`` was called; an error after SIGTERM is raised as ``Terminated``).

    The yielded dict's ``output_dir`` key, if set, is passed to ``on_run_end``. With ``active`` False
    (ranks other than 0) no hook is called.
    """
    outcome: dict[str, Any] = {"output_dir": None}
    if not active:
        yield outcome
        return
    call_lifecycle("on_run_start", run=run)
    try:
        yield outcome
    except KeyboardInterrupt:
        call_lifecycle("on_run_end", run=run, status="KILLED", output_dir=outcome["output_dir"], error=None)
        raise
    except BaseException as exc:
        if _sigterm_received:
            call_lifecycle("on_run_end", run=run, status="KILLED", output_dir=outcome["output_dir"], error=None)
            raise Terminated() from exc
        call_lifecycle("on_run_end", run=run, status="FAILED", output_dir=outcome["output_dir"],
                       error=error_line(exc))
        raise
    call_lifecycle("on_run_end", run=run, status="FINISHED", output_dir=outcome["output_dir"], error=None)
