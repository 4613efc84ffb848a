"""Training checkpoints: all a training needs to continue exactly where it stopped, written atomically into the
output directory's ``checkpoints/``, the last two kept."""

from __future__ import annotations

import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, flatten
from .errors import UsageError
from .writes import write_atomically, writing

DIRECTORY = "checkpoints"
KEEP = 2
DEFAULT_MINUTES = 10.0
FORMAT = 1
MAY_CHANGE = ("train.epochs", "train.checkpoint_every")  # what a resumed training may change


@dataclass
class Position:
    """Where a training stands: the 0-based epoch it is in, the batches of that epoch done, the optimizer steps done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def checkpoint_dir(output_dir: str | Path) -> Path:
    """The folder of a training's checkpoints."""
    return Path(output_dir) / DIRECTORY


def has_checkpoints(output_dir: str | Path) -> bool:
    """Whether an output directory holds checkpoints of an unfinished training."""
    return any(checkpoint_dir(output_dir).glob("step-*.pt"))


def rng_state() -> dict[str, Any]:
    """The random number generators' states: Python's, NumPy's, torch's (and CUDA's where there is a GPU)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    numpy_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    random.setstate(state["python"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Schedule:
    """When to write a checkpoint: every ``every`` steps, or (``every`` None) every ``minutes`` of training; never
    with ``every`` 0. The end of every epoch is always due (with ``every`` other than 0)."""

    def __init__(self, every: int | None, world_size: int = 1, minutes: float = DEFAULT_MINUTES):
        self.every = every
        self.world_size = world_size
        self.minutes = minutes
        self.last = time.monotonic()

    def due(self, step: int, end_of_epoch: bool) -> bool:
        """Whether to write a checkpoint after ``step`` steps (every rank gets the same answer)."""
        if self.every == 0:
            return False
        if end_of_epoch:
            return True
        if self.every is not None:
            return step % self.every == 0
        due = [time.monotonic() - self.last >= self.minutes * 60]
        if self.world_size > 1:  # the clocks of the ranks differ: rank 0 decides for all
            torch.distributed.broadcast_object_list(due, src=0)
        return due[0]

    def written(self) -> None:
        """Count the minutes from now."""
        self.last = time.monotonic()


def write(output_dir: str | Path, state: dict[str, Any], step: int) -> Path:
    """Write ``state`` as ``checkpoints/step-<step>.pt`` (whole or absent; a full disk is a DiskFullError), then
    delete all but the newest ``KEEP`` checkpoints."""
    directory = checkpoint_dir(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    with writing(f"a checkpoint into '{directory}'", directory,
                 then="run the same command with --resume (the checkpoints before it are whole)"):
        write_atomically(path, lambda handle: torch.save({"format": FORMAT, **state}, handle), binary=True)
    for old in sorted(directory.glob("step-*.pt"))[:-KEEP]:
        old.unlink()
    return path


def newest(output_dir: str | Path) -> dict[str, Any]:
    """The newest readable checkpoint of ``output_dir`` (an unreadable one is named on stderr and passed over), or
    a UsageError saying why there is none."""
    found = sorted(checkpoint_dir(output_dir).glob("step-*.pt"), reverse=True)
    if not found:
        raise UsageError(f"'{output_dir}' holds no checkpoint to resume from; run the same command without --resume")
    for path in found:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves to the device
        except pickle.UnpicklingError as exc:
            lines = str(exc).splitlines()
            why = next((line.strip() for line in lines if "Unsupported" in line), lines[0] if lines else "")
            raise UsageError(f"checkpoint {path} holds a value that torch.load(weights_only=True) refuses ({why}); "
                             f"a weighting's or tracker's state must be tensors, numbers, strings, lists and "
                             f"dicts") from None
        except Exception as exc:  # a truncated or corrupted file: torch, pickle and zip each raise their own
            print(f"adaptive-exit: warning: checkpoint {path} cannot be read ({type(exc).__name__}); trying an "
                  f"older one", file=sys.stderr)
            continue
        if state.get("format") != FORMAT:
            raise UsageError(f"checkpoint {path} is of format {state.get('format')}, this version reads {FORMAT}; "
                             f"resume with the version that wrote it")
        state["path"] = str(path)
        return state
    raise UsageError(f"no checkpoint in '{checkpoint_dir(output_dir)}' can be read; start the training again into "
                     f"another --output-dir")


def differences(then: dict[str, Any], now: dict[str, Any], may_change: tuple[str, ...] = ()) -> str:
    """How two run configurations differ, outside the dotted keys ``may_change`` ('' where they do not), e.g.
    ``train.lr: 5e-05 then, 0.0001 now``. A field added since ``then`` was written counts as its default then;
    plugin options added since are not compared, and an empty section then (``{}``) matches one with fields now."""
    old, new = flatten(then), flatten(now)
    defaults = flatten(RunConfig().model_dump())
    old.update({key: defaults[key] for key in new.keys() & defaults.keys() - old.keys()})

    def same(key: str) -> bool:
        return old[key] == new[key] if key in new else old[key] == {} and any(k.startswith(f"{key}.") for k in new)

    keys = sorted(key for key in old if key not in may_change and not same(key))
    return "; ".join(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in keys[:5])


def check_resumable(state: dict[str, Any], config: dict[str, Any], world_size: int) -> None:
    """A UsageError if the checkpoint's training differs from ``config`` (the resolved run configuration) in anything
    but ``MAY_CHANGE``, or ran with another number of processes."""
    differ = differences(state["config"], config, MAY_CHANGE)
    if differ:
        raise UsageError(f"the checkpoint in '{state['path']}' was written by another configuration ({differ}); "
                         f"resume with the same flags (only --epochs and --checkpoint-every may change)")
    if state["world_size"] != world_size:
        raise UsageError(f"the checkpoint was written by {state['world_size']} processes, this run has {world_size}; "
                         f"resume with the same number of processes")
    epochs = config["train"]["epochs"]
    if Position(**state["position"]).epoch >= epochs:
        raise UsageError(f"the checkpoint is past the end of epoch {epochs}; resume with --epochs "
                         f"{Position(**state['position']).epoch + 1} or more")


def capture(shared: dict[str, Any], own: dict[str, Any], position: Position, extra: dict[str, Any],
            world_size: int) -> dict[str, Any]:
    """A checkpoint's content: the ``state_dict()`` of each object of ``shared`` (the same on every rank) and, for
    every rank, of each object of ``own`` and its random number generators (a collective call under ``torchrun``);
    the position; ``extra``."""
    mine = {"rng": rng_state(), **{name: obj.state_dict() for name, obj in own.items()}}
    ranks = [mine]
    if world_size > 1:
        ranks = [None] * world_size
        torch.distributed.all_gather_object(ranks, mine)
    return {**{name: obj.state_dict() for name, obj in shared.items()}, "ranks": ranks,
            "position": asdict(position), "world_size": world_size, **extra}


def restore_shared(state: dict[str, Any], shared: dict[str, Any]) -> Position:
    """Load a checkpoint into each object of ``shared`` (``load_state_dict``); returns the position to continue
    from. This rank's own objects and random number generators come after, from ``state["ranks"][rank]``."""
    for name, obj in shared.items():
        obj.load_state_dict(state[name])
    return Position(**state["position"])
