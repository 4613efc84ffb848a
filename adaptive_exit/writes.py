"""Writing files: atomically (whole or absent), and a full disk, wherever it strikes (the model directory, a
checkpoint, MLflow's artifacts, its SQLite store), as one line naming what was being written and how much space is
free, with nothing half-written left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import UsageError

# How a full disk reads in the errors of the libraries between us and the disk: the OS (errno 28, or 122 for a
# quota), safetensors' Rust I/O error ("os error 28"), and SQLite ("database or disk is full").
FULL_DISK_TEXTS = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded")


class DiskFullError(UsageError):
    """A write that ran out of disk space; the message says what was being written and what is free."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the disk (or a quota) is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc).lower() for text in FULL_DISK_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_space(path: str | Path) -> str:
    """How much is free on the disk that holds ``path`` (or its nearest existing parent), for messages."""
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return "unknown space"
    return f"{free / 1e6:.1f} MB" if free < 1e9 else f"{free / 1e9:.1f} GB"


def full_disk_message(what: str, where: str | Path | None, then: str = "") -> str:
    """The one line for a full disk while writing ``what`` at ``where`` (None: a place without a local path)."""
    free = f" ({free_space(where)} free there)" if where is not None else ""
    return f"no space left on the disk while writing {what}{free}; free some space" + (f", then {then}" if then else "")


@contextlib.contextmanager
def writing(what: str, where: str | Path, cleanup: Callable[[], None] | None = None, then: str = "") -> Iterator[None]:
    """Run a write of ``what`` into ``where``: if the disk fills, call ``cleanup`` (remove what was half-written) and
    raise a DiskFullError saying so (``then``: what to do once there is space); other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, DiskFullError) or not is_disk_full(exc):  # an inner write already said what it wrote
            raise
        if cleanup is not None:
            with contextlib.suppress(Exception):  # best effort: the full disk is what to report
                cleanup()
        raise DiskFullError(full_disk_message(what, where, then)) from exc


def write_atomically(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk and rename it over ``path``, so that a
    crash or a full disk leaves the old file or the new one, never half of one (the temporary file is removed)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
