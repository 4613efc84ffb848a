"""The whole pipeline on a real tiny model: train, save, load, evaluate, MLflow records."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from adaptive_exit import MultiExitModel, Weighting, hookimpl
from adaptive_exit import plugins
from adaptive_exit.cli import main


def runs_in(db):
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_train_logs_a_finished_run_with_metrics_and_artifacts(trained_model):
    (run,) = runs_in(trained_model.parent / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{trained_model.parent / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.data.params["weighting.name"] == "cosee" and run.data.params["signal.name"] == "entropy"
    assert run.data.params["plugin.weighting"].startswith("cosee (cosee ")
    assert run.data.params["train.lr"] == "5e-05"
    assert run.data.params["weighting.options.beta0"] == "10.0"  # defaults are recorded, not only flags
    assert run.data.params["signal.options.temperature"] == "1.0"
    for key in ("loss", "lr", "cosee_ce", "cosee_osc", "beta_t", "exit_1_accuracy", "exit_2_accuracy", "auc",
                "curve_accuracy", "curve_speedup", "accuracy_at_1.5x", "accuracy_at_2x"):
        assert key in run.data.metrics, key
    steps = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in steps] == list(range(1, 5))  # 64 samples / batch 16
    curve = client.get_metric_history(run.info.run_id, "curve_speedup")
    assert len(curve) > 10 and min(m.value for m in curve) == 1.0 and max(m.value for m in curve) == 2.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curve.png", "sweep.csv", "sweep.json", "config.yaml"} <= artifacts
    assert run.data.tags["adaptive_exit.command"] == "train"


def test_saved_model_loads_back_identically(trained_model):
    config = json.loads((trained_model / "adaptive_exit.json").read_text())
    assert (config["num_layers"], config["num_labels"], config["pooling"]) == (2, 2, "mean")
    assert config["signal"] == {"name": "entropy", "options": {"temperature": 1.0}}
    assert config["weighting"]["name"] == "cosee" and config["weighting"]["options"]["num_thresholds"] == 5
    first, second = MultiExitModel.from_pretrained(trained_model), MultiExitModel.from_pretrained(trained_model)
    batch = first.tokenizer(["a fine film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = first(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        b = second(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    assert a.logits.shape == (2, 2, 2) and torch.equal(a.logits, b.logits)


def test_evaluate_json_with_any_signal(cli, trained_model):
    done = cli("evaluate", str(trained_model), "--json", "--signal", "energy", "--max-eval-samples", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert set(result) >= {"curve", "per_exit_metric", "auc", "metric_at"}
    assert result["signal"] == "energy" and result["num_samples"] == 40
    assert set(result["curve"][0]) == {"threshold", "speedup", "metric", "exit_counts", "risk"}
    assert {p["speedup"] for p in result["curve"]} >= {1.0, 2.0}
    assert all(sum(p["exit_counts"]) == 40 for p in result["curve"])
    assert set(result["metric_at"]) == {"1.5", "2", "3", "4"} and result["metric_at"]["3"] is None


def test_evaluate_given_thresholds_and_table(cli, trained_model):
    done = cli("evaluate", str(trained_model), "--thresholds", "0", "1.01", "--max-eval-samples", "40", "--no-track")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "per-exit accuracy" in done.stdout and "AUC" in done.stdout
    done = cli("evaluate", str(trained_model), "--thresholds", "0", "1.01", "--json", "--no-track",
               "--max-eval-samples", "40")
    curve = json.loads(done.stdout)["curve"]
    # entropy exits when below the threshold: 0 lets nobody out early, 1.01 lets everybody out at exit 1
    assert [p["exit_counts"] for p in curve] == [[0, 40], [40, 0]]


def test_evaluate_rejects_bad_sample_count(cli, trained_model):
    done = cli("evaluate", str(trained_model), "--max-eval-samples", "0", "--no-track")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data.max_eval_samples" in done.stderr


class Exploding(Weighting):
    """A weighting that fails on its first step."""

    name = "exploding"

    def loss(self, outputs, labels, step):
        raise RuntimeError("boom")


class ExplodingPlugin:
    @hookimpl
    def register_weightings(self, register):
        register(Exploding)


@pytest.fixture
def exploding_plugin():
    pm = plugins.get_plugin_manager()
    pm.register(ExplodingPlugin(), name="exploding")
    plugins.refresh()
    yield
    pm.unregister(name="exploding")
    plugins.refresh()


def test_failed_train_marks_run_failed(exploding_plugin, env, tmp_path, monkeypatch, capsys):
    for key in ("ADAPTIVE_EXIT_CACHE", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # earlier tests in this process may have set another
    assert main(["train", "--weighting", "exploding", "--num-layers", "1", "--max-train-samples", "8",
                 "--max-eval-samples", "8", "--max-length", "16", "--output-dir", "out"]) == 2
    assert "weighting 'exploding' of plugin 'exploding' (registered in this process) raised in loss: RuntimeError: " \
           "boom" in capsys.readouterr().err
    (run,) = runs_in(tmp_path / "mlflow.db")
    assert run.info.status == "FAILED"
    assert not (tmp_path / "out").exists()
