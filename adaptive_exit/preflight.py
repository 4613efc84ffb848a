"""Checks made before a training starts, so that what would fail after the work fails before it."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

from .errors import UsageError


@contextlib.contextmanager
def claimed_output_dir(output_dir: str) -> Iterator[None]:
    """Check that ``output_dir`` is free and writable, and hold a lock on ``<output_dir>.lock`` meanwhile, so a
    second run into the same directory fails at once."""
    directory = Path(output_dir)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"output directory '{output_dir}' exists and is not empty; pass another --output-dir")
    lock_path = Path(f"{str(directory).rstrip('/')}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "w")
    except OSError as exc:
        raise UsageError(f"cannot write the output directory '{output_dir}' ({exc.strerror}); pass another "
                         f"--output-dir") from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"output directory '{output_dir}' is in use by another run (it holds "
                                 f"{lock_path}); pass another --output-dir") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def check_disk_room(output_dir: str, model: Any) -> None:
    """A UsageError if the output directory's disk cannot hold the model (its parameters in fp32, twice: the
    model is written beside the directory, then renamed)."""
    need = 2 * sum(p.numel() * 4 for p in model.parameters())
    free = shutil.disk_usage(Path(f"{str(output_dir).rstrip('/')}.lock").parent).free
    if free < need:
        raise UsageError(f"not enough disk space for the model in '{output_dir}': about {need / 1e6:.0f} MB "
                         f"needed, {free / 1e6:.0f} MB free; free some space or pass another --output-dir")


def check_max_length(max_length: int, encoder: Any, backbone: str) -> None:
    """A UsageError if ``--max-length`` is more tokens than the encoder takes."""
    limit = getattr(encoder, "max_positions", None)
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length} is more than backbone '{backbone}' takes ({limit} tokens); "
                         f"pass --max-length {limit} or less")
