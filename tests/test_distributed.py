"""Training under torchrun with two CPU processes (gloo): one model, one MLflow run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY


def test_two_process_torchrun_trains_one_model_and_one_run(env, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node=2",
               "--master_port=29611", "-m", "adaptive_exit", "train", *TINY, "--weighting", "cosee",
               "--max-train-samples", "64", "--max-eval-samples", "32", "--output-dir", "model"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((tmp_path / "model" / "adaptive_exit.json").read_text())["weighting"]["name"] == "cosee"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    # 64 samples over 2 processes with batch 16: 2 optimizer steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]


@pytest.mark.slow  # about 70 s on 2 cores: three two-process trainings
def test_a_killed_torchrun_training_resumes_bit_exactly(env, tmp_path):
    from test_resume import killed_and_resumed

    torchrun = Path(sys.executable).with_name("torchrun")
    launch = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node=2",
              "--standalone", "-m", "adaptive_exit"]
    # 256 samples over 2 processes with batch 16: 8 steps per epoch
    killed_and_resumed(launch, env, tmp_path, [*TINY, "--epochs", "2", "--weighting", "cosee", "--max-train-samples",
                                                "256", "--max-eval-samples", "32", "--checkpoint-every", "2",
                                                "--precision", "fp32"], steps=16)
