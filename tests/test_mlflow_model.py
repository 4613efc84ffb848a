"""The trained model in MLflow: dataset inputs, tags, a pyfunc model that loads, predicts and serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import http_server


@pytest.fixture(scope="module")
def logged(trained_model):
    """The train run of the session's tiny model and the id of the MLflow model it logged."""
    mlflow.set_tracking_uri(f"sqlite:///{trained_model.parent / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["movie-reviews"], filter_string="tags.`adaptive_exit.command` = 'train'",
                             output_format="list")[0]
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    return run, models[0].model_id


def test_run_records_data_inputs_and_tags(logged):
    run, _ = logged
    inputs = {i.dataset.name: [t.value for t in i.tags] for i in run.inputs.dataset_inputs}
    assert inputs == {"movie-reviews:train": ["training"], "movie-reviews:validation": ["validation"]}
    profile = json.loads(run.inputs.dataset_inputs[0].dataset.profile)
    assert profile["num_rows"] in (64, 48)
    tags = run.data.tags
    assert tags["adaptive_exit.plugin.weighting"].startswith("cosee (cosee ")
    assert tags["adaptive_exit.plugin.signal"].startswith("entropy (adaptive_exit (built-in) ")
    assert "train" in tags["adaptive_exit.argv"] and len(tags["mlflow.source.git.commit"]) == 40


def test_a_model_is_logged_only_with_the_code_that_ran(logged, trained_model, tmp_path):
    """The logged wheel's version tail is the hash of the code on disk; where that code changed since the training
    process started, the model is refused with one line, not logged with code that never ran."""
    from adaptive_exit import UsageError
    from adaptive_exit.mlflow_model import code_hash, log_model

    _, model_id = logged
    local = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "logged"))
    (wheel,) = Path(local).rglob("*.whl")
    assert wheel.name == f"adaptive_exit-0.1.0+{code_hash()}-py3-none-any.whl"
    store = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a run of its own, outside the session's store
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("code-check")), pytest.raises(UsageError, match=r"^the code of adaptive-exit changed on disk"):
            log_model(str(trained_model), expected_code="0" * 12)
    finally:
        mlflow.set_tracking_uri(store)


def test_logged_model_is_code_and_files_without_a_pickle(logged, trained_model, tmp_path):
    """Logged from code: no pickle in the artifact, the project as a wheel beside it, and a fresh process loads it
    and answers with exit layers."""
    import zipfile

    _, model_id = logged
    assert "pickle" not in (trained_model.parent / "train.stderr").read_text().lower()
    local = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path))
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle")]
    assert (Path(local) / "mlflow_pyfunc.py").is_file()
    wheel = next(p for p in files if p.suffix == ".whl")
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert f"artifacts/{wheel.name}" in requirements
    assert re.fullmatch(r"adaptive_exit-0\.1\.0\+[0-9a-f]{12}-py3-none-any\.whl", wheel.name)
    names = zipfile.ZipFile(wheel).namelist()
    assert "adaptive_exit/mlflow_pyfunc.py" in names and "adaptive_exit_baselines/__init__.py" in names
    # pip installs it (no index, no dependencies), with its metadata and the plugins' entry points
    target = tmp_path / "installed"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (info,) = target.glob("adaptive_exit-*.dist-info")
    assert "Name: adaptive-exit\n" in (info / "METADATA").read_text()
    assert "cosee = adaptive_exit_cosee" in (info / "entry_points.txt").read_text()
    assert (target / "adaptive_exit_cosee" / "__init__.py").is_file()
    script = ("import sys, mlflow, pandas as pd; m = mlflow.pyfunc.load_model(sys.argv[1]); "
              "print(m.predict(pd.DataFrame({'text': ['a warm film', 'dull']}), params={'threshold': 1.01})"
              "['exit_layer'].tolist())")
    done = subprocess.run([sys.executable, "-c", script, local], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[1, 1]"


def test_pyfunc_model_predicts_with_exit_layers(logged, trained_model):
    run, model_id = logged
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.model_id == model_id
    stored = json.loads((trained_model / "adaptive_exit.json").read_text())["calibration"]
    assert model.metadata.get_params_schema().to_dict()[0]["default"] == pytest.approx(stored["threshold"])
    frame = pd.DataFrame({"text": ["a warm and funny film", "dull", "it is what it is"]})
    answers = model.predict(frame)
    assert list(answers.columns) == ["label", "probabilities", "exit_layer"]
    assert set(answers["label"]) <= {"negative", "positive"}
    assert all(len(p) == 2 and sum(p) == pytest.approx(1.0, abs=1e-5) for p in answers["probabilities"])
    # entropy lies in [0, 1]: below 1.01 everyone leaves at layer 1, below 0 nobody leaves before layer 2
    assert model.predict(frame, params={"threshold": 1.01})["exit_layer"].tolist() == [1, 1, 1]
    assert model.predict(frame, params={"threshold": 0.0})["exit_layer"].tolist() == [2, 2, 2]
    with pytest.raises(Exception, match=r"missing inputs \['text'\]"):
        model.predict(pd.DataFrame({"sentence": ["x"]}))


def test_served_model_answers_over_http(logged, trained_model, tmp_path):
    _, model_id = logged
    bin_dir = os.path.dirname(sys.executable)  # `--env-manager local` starts the environment's uvicorn
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{trained_model.parent / 'mlflow.db'}",
           "HF_HUB_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def serve(port: int) -> list[str]:
        return [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", f"models:/{model_id}", "--env-manager",
                "local", "-h", "127.0.0.1", "-p", str(port)]

    with http_server(serve, "/ping", tmp_path, env) as port:
        body = {"dataframe_split": {"columns": ["text"], "data": [["a fine film"], ["boring"]]},
                "params": {"threshold": 1.01}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    rows = answer["predictions"]
    assert [row["exit_layer"] for row in rows] == [1, 1]
    assert all(row["label"] in ("negative", "positive") and len(row["probabilities"]) == 2 for row in rows)
