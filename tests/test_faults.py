"""A run's MLflow status tells the truth when its process is stopped: SIGTERM, or SIGKILL (real subprocesses)."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY

from adaptive_exit.hookspecs import hookimpl


def start_training(env, tmp_path):
    """A tiny `train` long enough to be stopped, and a function that waits for its RUNNING MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.search_experiments()  # the store is created here, before the training opens it: two creators collide
    process = subprocess.Popen([sys.executable, "-m", "adaptive_exit", "train", *TINY, "--epochs", "20",
                                "--max-train-samples", "2000", "--max-eval-samples", "32"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_run():
        deadline = time.time() + 120
        while time.time() < deadline:
            assert process.poll() is None, process.communicate()[1][-2000:]
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      "attributes.status = 'RUNNING'") if client.search_experiments() else []
            if runs:
                return runs[0]
            time.sleep(0.5)
        raise AssertionError("the training never started its run")

    return process, running_run, client


def test_sigterm_ends_the_run_killed_with_exit_143(env, tmp_path):
    process, running_run, client = start_training(env, tmp_path)
    run = running_run()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "adaptive-exit: terminated"
    assert client.get_run(run.info.run_id).info.status == "KILLED"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored exception, on purpose
def test_a_sigterm_whose_exception_python_ignored_still_stops_the_training(monkeypatch):
    from adaptive_exit import lifecycle

    monkeypatch.setattr(lifecycle, "_sigterm_received", False)

    class Swallows:
        def __del__(self):
            lifecycle._raise_terminated(signal.SIGTERM, None)

    Swallows()  # Python prints "Exception ignored in ..." and goes on
    with pytest.raises(lifecycle.Terminated):
        lifecycle.raise_if_terminated()


def test_a_run_whose_process_was_killed_is_failed_by_the_next_command(env, tmp_path, cli):
    process, running_run, client = start_training(env, tmp_path)
    run = running_run()
    process.kill()
    process.communicate(timeout=60)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody could say otherwise
    cli("train", "--dataset", "csv", "--train-file", "missing.csv")  # any command that opens the store
    found = client.get_run(run.info.run_id)
    assert found.info.status == "FAILED"
    assert f"process {process.pid}" in found.data.tags["adaptive_exit.failure"]


def test_a_failed_config_update_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import json
    import os

    import pytest

    from adaptive_exit.model import MODEL_CONFIG, update_model_config

    path = tmp_path / MODEL_CONFIG
    path.write_text(json.dumps({"num_labels": 2}))
    update_model_config(tmp_path, "calibration", {"threshold": 0.25})
    assert json.loads(path.read_text()) == {"calibration": {"threshold": 0.25}, "num_labels": 2}

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        update_model_config(tmp_path, "calibration", {"threshold": 0.5})
    assert json.loads(path.read_text())["calibration"] == {"threshold": 0.25}


def test_checks_before_the_work(cli, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import pytest
    import torch

    from adaptive_exit.errors import UsageError
    from adaptive_exit.preflight import check_disk_room, claimed_output_dir

    from test_cli_errors import assert_usage_error

    done = cli("train", "--num-layers", "1", extra_env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_usage_error(done, "tracking server at http://127.0.0.1:9 does not answer", "--no-track")
    assert_usage_error(cli("train", "--num-layers", "1", "--max-length", "1000", "--no-track"),
                       "--max-length 1000 is more than backbone 'minilm-l6' takes (512 tokens)")
    with claimed_output_dir(str(tmp_path / "taken")):
        done = cli("train", "--num-layers", "1", "--no-track", "--output-dir", "taken")
        assert_usage_error(done, "output directory 'taken' is in use by another run")
    assert not (tmp_path / "taken.lock").exists()  # released with the run
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(UsageError, match="about 40 MB needed, 1 MB free.*or --checkpoint-every 0"):
        check_disk_room(str(tmp_path / "model"), torch.nn.Linear(1000, 1000))
    with pytest.raises(UsageError, match="model in .*: about 4 MB needed, 1 MB free; free some space, pass another "
                                         "--output-dir$"):
        check_disk_room(str(tmp_path / "model"), torch.nn.Linear(1000, 1000), checkpoints=False)


def test_finished_only_once_the_model_is_logged(env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from adaptive_exit import mlflow_model
    from adaptive_exit.cli import main

    import mlflow

    for key in ("ADAPTIVE_EXIT_CACHE", "HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, env[key])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # an earlier test in this process may have set another
    monkeypatch.chdir(tmp_path)
    tiny = ["train", "--num-layers", "1", "--max-train-samples", "8", "--batch-size", "4", "--max-eval-samples", "8",
            "--max-length", "16"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for raised, status in ((OSError(28, "No space left on device"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        def log_model(output_dir, expected_code=None, raised=raised):
            raise raised

        monkeypatch.setattr(mlflow_model, "log_model", log_model)
        assert main([*tiny, "--output-dir", f"out-{status}"]) == {"KILLED": 130, "FAILED": 2}[status]
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    f"tags.`adaptive_exit.output_dir` LIKE '%out-{status}'")
        assert run.info.status == status


class EndRecorder:
    def __init__(self):
        self.statuses = []

    @hookimpl
    def on_run_end(self, run, status, output_dir):
        self.statuses.append(status)


def test_an_error_that_sigterm_caused_ends_the_run_killed(monkeypatch):
    """SIGTERM that lands inside a class being created (during an import) surfaces as a RuntimeError."""
    from adaptive_exit import lifecycle, plugins

    recorder = EndRecorder()
    plugins.get_plugin_manager().register(recorder, name="end-recorder")
    monkeypatch.setattr(lifecycle, "_sigterm_received", True)
    try:
        with pytest.raises(lifecycle.Terminated):
            with lifecycle.lifecycle(lifecycle.RunInfo("train", {}, {}, "experiment", tracking=False)):
                raise RuntimeError("Error calling __set_name__ on 'Field' instance 'split_info' in 'SplitGenerator'")
    finally:
        plugins.get_plugin_manager().unregister(name="end-recorder")
    assert recorder.statuses == ["KILLED"]


def test_an_error_that_sigterm_caused_outside_a_run_exits_143(monkeypatch, capsys):
    from adaptive_exit import cli, lifecycle

    def fails(args):
        lifecycle._sigterm_received = True  # what the handler sets, with its exception turned into another one
        raise RuntimeError("Error calling __set_name__")

    monkeypatch.setattr(lifecycle, "_sigterm_received", False)
    monkeypatch.setattr(cli, "cmd_plugins", fails)
    assert cli.main(["plugins"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "adaptive-exit: terminated"
