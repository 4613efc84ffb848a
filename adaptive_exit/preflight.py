"""Checks made before a training starts, so that what would fail after the work fails before it."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

from .errors import UsageError


@contextlib.contextmanager
def claimed_output_dir(output_dir: str, resume: bool = False) -> Iterator[None]:
    """Check that ``output_dir`` is free (with ``resume``: holds checkpoints) and writable, and hold a lock on
    ``<output_dir>.lock`` meanwhile, so a second run into the same directory fails at once."""
    from .checkpoints import DIRECTORY as CHECKPOINTS, has_checkpoints
    from .model import MODEL_CONFIG

    directory = Path(output_dir)
    if (directory / MODEL_CONFIG).exists():
        raise UsageError(f"output directory '{output_dir}' holds a finished model; pass another --output-dir")
    if resume and not has_checkpoints(directory):
        raise UsageError(f"'{output_dir}' holds no checkpoint to resume from; run the same command without --resume")
    if not resume and not has_checkpoints(directory):  # a training killed while it wrote its first checkpoint
        shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
    if not resume and has_checkpoints(directory):
        raise UsageError(f"output directory '{output_dir}' holds the checkpoints of an unfinished training; add "
                         f"--resume to continue it, or pass another --output-dir")
    if not resume and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
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


def check_disk_room(output_dir: str, model: Any, checkpoints: bool = True) -> None:
    """A UsageError if the output directory's disk cannot hold the model (its parameters in fp32) and, with
    ``checkpoints``, three checkpoints (the two kept and the one being written; each the parameters and the
    optimizer's two moments: three times the model)."""
    size = sum(p.numel() * 4 for p in model.parameters())
    need = size * (10 if checkpoints else 1)
    free = shutil.disk_usage(Path(f"{str(output_dir).rstrip('/')}.lock").parent).free
    if free < need:
        kept = " and its checkpoints" if checkpoints else ""
        raise UsageError(f"not enough disk space for the model{kept} in '{output_dir}': about {need / 1e6:.0f} MB "
                         f"needed, {free / 1e6:.0f} MB free; free some space, pass another --output-dir"
                         + (", or --checkpoint-every 0" if checkpoints else ""))


def check_max_length(max_length: int, encoder: Any, backbone: str) -> None:
    """A UsageError if ``--max-length`` is more tokens than the encoder takes."""
    limit = getattr(encoder, "max_positions", None)
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length} is more than backbone '{backbone}' takes ({limit} tokens); "
                         f"pass --max-length {limit} or less")


# Below this many evaluation samples a sweep says little: one sample moves the accuracy by more than a point, and the
# standard error of an accuracy near 0.8 is sqrt(0.16 / n), 4 points at n = 100, more than the differences between
# thresholds near 2x that calibration chooses between.
MIN_EVALUATION_SAMPLES = 100


def check_training_data(task: Any, data: Any, warn: bool = True) -> None:
    """A UsageError if a classification training split holds fewer than two classes (nothing to learn, and no exit
    signal is defined on one class); with ``warn``, a warning on stderr if the evaluation split is too small to mean
    much."""
    where = f"training file '{data.train_file}'" if data.train_file else f"dataset '{data.dataset}'"
    if task.task == "classification":
        classes = sorted(set(task.splits["train"]["label"]))
        if len(classes) < 2:
            found = f"only the class '{task.label_names[classes[0]]}'" if classes else "no labelled row"
            raise UsageError(f"the training split of {where} holds {found}: a classifier needs at least two classes; "
                             f"check the label column (--label-column) and the file")
    size = len(task.splits[data.eval_split])
    if warn and size < MIN_EVALUATION_SAMPLES:
        source = f"validation file '{data.validation_file}'" if data.validation_file else where
        print(f"adaptive-exit: warning: the {data.eval_split} split of {source} has {size} sample(s): one sample moves "
              f"the accuracy by {100 / max(size, 1):.0f} points, so its sweep and the stored threshold say little; "
              f"give at least {MIN_EVALUATION_SAMPLES} (--validation-file, or more --max-eval-samples)",
              file=sys.stderr)
