"""A really full disk, on a real small filesystem (a tmpfs mounted for the test): while the model is saved, while a
checkpoint is written, while MLflow logs the model, and when the MLflow store itself cannot be written. Each is one
line and exit code 2, leaves no loadable half model, and the run ends FAILED with the disk as its reason (at once, or
by the next command once there is space again)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TINY
from contract_helpers import site  # noqa: F401 (fixture)
from test_cli_errors import assert_usage_error

FILLER = '''
import os

from adaptive_exit import hookimpl


def fill(path, leave):
    """Write zeros into ``path`` until the disk is full, then give back ``leave`` bytes."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(bytes(1 << 20))
                handle.flush()
        except OSError:
            pass
    os.truncate(path, max(0, os.path.getsize(path) - leave))


@hookimpl
def on_step_end(run, step, logs):
    if os.environ.get("FILL_AT") == f"step {step}":
        fill(os.environ["FILL_FILE"], int(os.environ.get("FILL_LEAVE", "0")))


@hookimpl
def on_evaluate_end(run, results):
    if os.environ.get("FILL_AT") == "final evaluation" and run.command == "train" and results.epoch is None:
        fill(os.environ["FILL_FILE"], int(os.environ.get("FILL_LEAVE", "0")))
'''
SMALL = [*TINY, "--num-layers", "1", "--max-train-samples", "32", "--max-eval-samples", "16", "--weighting",
         "uniform"]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[callable]:
    """``disk(megabytes)``: a tmpfs of that size mounted in the test's directory (unmounted after)."""
    mounted = []

    def mount(megabytes: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): the full-disk tests "
                        f"need root or a user namespace")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def run_of(store: str):
    """The one MLflow run of the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def train(env, site, cwd: Path, *args: str, fill_at: str, fill_file: Path, leave: int = 0, store: str | None = None):
    extra = {"FILL_AT": fill_at, "FILL_FILE": str(fill_file), "FILL_LEAVE": str(leave), **site.pythonpath}
    if store:
        extra["MLFLOW_TRACKING_URI"] = store
    return subprocess.run([sys.executable, "-m", "adaptive_exit", "train", *SMALL, *args], cwd=cwd,
                          env={**env, **extra}, capture_output=True, text=True, timeout=600)


def test_the_disk_fills_while_the_model_is_saved(env, site, disk, tmp_path) -> None:
    site.add("adaptive-exit-filler", "filler", FILLER)
    small = disk(120)
    out = small / "model"
    done = train(env, site, tmp_path, "--output-dir", str(out), "--checkpoint-every", "0",
                 fill_at="final evaluation", fill_file=small / "filler")
    assert_usage_error(done, f"no space left on the disk while writing the model into '{out}' (",
                       "MB free there); free some space, then train again")
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written left
    (small / "filler").unlink()
    client, run = run_of(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED" and "no space left on the disk" in run.data.tags["adaptive_exit.error"]


def test_the_disk_fills_while_a_checkpoint_is_written(env, site, disk, tmp_path) -> None:
    site.add("adaptive-exit-filler", "filler", FILLER)
    small = disk(700)  # the checks before the work want room for the model and three checkpoints
    out = small / "model"
    done = train(env, site, tmp_path, "--output-dir", str(out), "--checkpoint-every", "1", fill_at="step 1",
                 fill_file=small / "filler")
    assert_usage_error(done, f"no space left on the disk while writing a checkpoint into '{out / 'checkpoints'}'",
                       "then run the same command with --resume")
    assert not any((out / "checkpoints").glob("*.tmp")) and not (out / "adaptive_exit.json").exists()
    (small / "filler").unlink()
    client, run = run_of(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED" and "while writing a checkpoint" in run.data.tags["adaptive_exit.error"]


def test_the_disk_fills_while_mlflow_logs_the_model(env, site, disk, tmp_path) -> None:
    from adaptive_exit import MultiExitModel

    site.add("adaptive-exit-filler", "filler", FILLER)
    small = disk(160)
    store = f"sqlite:///{small / 'mlflow.db'}"
    done = train(env, site, small, "--output-dir", str(tmp_path / "model"), "--checkpoint-every", "0",
                 fill_at="final evaluation", fill_file=small / "filler", leave=4 << 20, store=store)
    assert_usage_error(done, "no space left on the disk while writing the MLflow model of run",
                       f"then use the model in {tmp_path / 'model'}, which is complete")
    MultiExitModel.from_pretrained(tmp_path / "model")  # the model directory is whole
    (small / "filler").unlink()
    client, run = run_of(store)
    assert run.info.status == "FAILED" and "no space left" in run.data.tags["adaptive_exit.error"]
    from mlflow.entities import LoggedModelStatus

    models = client.search_logged_models([run.info.experiment_id])
    assert [m.status for m in models] == [LoggedModelStatus.FAILED]
    assert not Path(models[0].artifact_location.removeprefix("file://")).exists()  # no half-written model files


def test_a_store_that_cannot_be_written_is_failed_by_the_next_command(env, site, disk, tmp_path,
                                                                      trained_model) -> None:
    site.add("adaptive-exit-filler", "filler", FILLER)
    small = disk(160)
    store = f"sqlite:///{small / 'mlflow.db'}"
    done = train(env, site, small, "--output-dir", str(tmp_path / "model"), "--checkpoint-every", "0",
                 fill_at="final evaluation", fill_file=small / "filler", store=store)
    assert_usage_error(done, "no space left on the disk while writing", "the MLflow store",
                       "the next command on this store marks run")
    (small / "filler").unlink()
    client, run = run_of(store)
    assert run.info.status == "RUNNING"  # the store could not take the end
    later = subprocess.run([sys.executable, "-m", "adaptive_exit", "evaluate", str(trained_model),
                            "--max-eval-samples", "8"], cwd=small, env={**env, "MLFLOW_TRACKING_URI": store},
                           capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, later.stderr[-2000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert "no space left on the disk while writing" in run.data.tags["adaptive_exit.failure"]
    assert "ended without closing" not in run.data.tags["adaptive_exit.failure"]
