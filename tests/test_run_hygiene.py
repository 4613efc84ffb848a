"""Runs never left RUNNING: Ctrl-C ends a train run KILLED with no half-written model; two commands share a store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow

from conftest import TINY


def logged_steps(database) -> int:
    """Loss values logged so far, read without MLflow (which would migrate a store being created)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM metrics WHERE key = 'loss'").fetchone()[0]
    except sqlite3.Error:
        return 0


def default_sigint() -> None:
    """Give the child Ctrl-C's default action: a shell starting pytest in the background (`pytest &`, CI runners)
    makes its children ignore SIGINT, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_ends_the_run_killed_and_leaves_no_half_model(env, tmp_path):
    train = subprocess.Popen([sys.executable, "-m", "adaptive_exit", "train", "--num-layers", "2", "--max-length", "32",
                              "--batch-size", "8", "--max-train-samples", "4000", "--max-eval-samples", "32",
                              "--output-dir", "model"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 300
    while logged_steps(tmp_path / "mlflow.db") < 3:  # interrupt once training has logged a few steps
        assert train.poll() is None and time.time() < deadline, train.stderr.read()[-2000:]
        time.sleep(0.5)
    train.send_signal(signal.SIGINT)
    _, stderr = train.communicate(timeout=120)
    assert train.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "adaptive-exit: interrupted"
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("model")] == []


def test_two_commands_at_once_both_land_in_the_default_store(env, tmp_path):
    quiet = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}  # the default: sqlite:///mlflow.db here
    commands = [subprocess.Popen([sys.executable, "-m", "adaptive_exit", "train", *TINY, "--max-train-samples", "32",
                                  "--max-eval-samples", "32", "--seed", str(seed), "--output-dir", f"model-{seed}"],
                                 cwd=tmp_path, env=quiet, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for seed in (1, 2)]
    for command in commands:
        _, stderr = command.communicate(timeout=600)
        assert command.returncode == 0, stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["movie-reviews"])
    assert sorted(runs["params.train.seed"]) == ["1", "2"]
    assert set(runs.status) == {"FINISHED"} and runs["metrics.auc"].notna().all()
