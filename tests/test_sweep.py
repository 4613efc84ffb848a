"""Sweeps: the grid, the comparison's numbers, and a real sweep as MLflow parent and child runs."""

from __future__ import annotations

import json

import mlflow
import pytest

from adaptive_exit.evaluation import CurvePoint, EvaluationResult
from adaptive_exit.sweeps import ChildResult, Comparison, expand_grid, mean_curve
from conftest import TINY


def test_expand_grid_order():
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert expand_grid({}) == [{}]


def result(auc: float, at2: float, curve: list[tuple[float, float]]) -> EvaluationResult:
    return EvaluationResult("entropy", "accuracy", 10, [CurvePoint(0.0, s, m, []) for s, m in curve], [0.5, 0.7],
                            auc, {"1.5": None, "2": at2, "3": None, "4": None})


def test_comparison_groups_seeds_with_mean_and_spread(tmp_path):
    comparison = Comparison("accuracy", [
        ChildResult("a seed=1", "a", 1, result(0.70, 0.60, [(1.0, 0.8), (2.0, 0.6)])),
        ChildResult("a seed=2", "a", 2, result(0.80, 0.70, [(1.0, 0.9), (2.0, 0.7)])),
        ChildResult("b seed=1", "b", 1, result(0.60, 0.50, [(1.0, 0.7), (2.0, 0.5)])),
    ])
    a, b = comparison.rows()
    assert (a["configuration"], a["runs"], a["seeds"]) == ("a", 2, "1 2")
    # sample standard deviation of (0.7, 0.8): sqrt(2 · 0.05² / 1) = 0.070711
    assert a["auc_mean"] == pytest.approx(0.75) and a["auc_std"] == pytest.approx(0.0707107)
    assert a["accuracy_at_2x_mean"] == pytest.approx(0.65) and a["accuracy_at_1.5x_mean"] is None
    assert b["auc_std"] == 0.0
    grid, mean, low, high = mean_curve([c.result for c in comparison.children[:2]], points=3)
    assert grid.tolist() == [1.0, 1.5, 2.0] and mean.tolist() == pytest.approx([0.85, 0.75, 0.65])
    assert low.tolist() == pytest.approx([0.8, 0.7, 0.6]) and high.tolist() == pytest.approx([0.9, 0.8, 0.7])
    paths = comparison.write(tmp_path)
    assert [p.name for p in paths] == ["comparison.csv", "comparison.json", "comparison.png"]
    assert (tmp_path / "comparison.csv").read_text().splitlines()[0].startswith("configuration,runs,seeds,auc_mean")
    assert len(json.loads((tmp_path / "comparison.json").read_text())["children"]) == 3
    again = Comparison.read(tmp_path / "comparison.json")
    assert again.rows() == comparison.rows() and again.children[1].result.curve == comparison.children[1].result.curve


def test_sweep_as_parent_and_child_runs(cli, tmp_path):
    done = cli("sweep", *TINY, "--weighting", "cosee,uniform", "--signal", "entropy,energy", "--beta0", "1",
               "--max-train-samples", "32", "--max-eval-samples", "32", "--output-dir", "sweep")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weighting=cosee signal=entropy" in done.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["movie-reviews"])
    parents = runs[runs["tags.adaptive_exit.command"] == "sweep"]
    children = runs[runs["tags.adaptive_exit.command"] == "train"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents.run_id.iloc[0]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(runs.status) == {"FINISHED"}
    assert sorted(children["tags.mlflow.runName"]) == [
        "weighting=cosee signal=energy", "weighting=cosee signal=entropy",
        "weighting=uniform signal=energy", "weighting=uniform signal=entropy"]
    # the children carry the same metric names, so MLflow's compare view lines them up
    assert children["metrics.auc"].notna().all() and children["metrics.accuracy_at_2x"].notna().all()
    cosee = children[children["params.weighting.name"] == "cosee"]
    assert set(cosee["params.weighting.options.beta0"]) == {"1.0"}
    assert parents["params.grid.weighting"].iloc[0] == "cosee,uniform"
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"comparison.csv", "comparison.json",
                                                                  "comparison.png"}
    table = json.loads(open(client.download_artifacts(parent_id, "comparison.json", str(tmp_path))).read())
    assert [g["configuration"] for g in table["groups"]] == [  # in grid order
        "weighting=cosee signal=entropy", "weighting=cosee signal=energy",
        "weighting=uniform signal=entropy", "weighting=uniform signal=energy"]
    assert {a.path for a in client.list_artifacts(children.run_id.iloc[0])} >= {"curve.png", "sweep.csv"}
    assert (tmp_path / "sweep" / "comparison.csv").is_file()
    assert (tmp_path / "sweep" / "weighting=uniform_signal=energy" / "adaptive_exit.json").is_file()


def test_sweep_option_of_no_chosen_plugin_is_an_error(cli):
    done = cli("sweep", "--weighting", "uniform,weighted-average", "--beta0", "1,2", "--no-track")
    assert done.returncode == 2
    assert done.stderr.strip() == ("adaptive-exit: error: --beta0 applies to none of the sweep's signals and "
                                   "weightings")


def test_a_failing_child_does_not_stop_the_sweep_and_resume_trains_only_what_is_missing(cli, tmp_path):
    sweep = ("sweep", *TINY, "--num-layers", "9,1", "--max-train-samples", "16", "--max-eval-samples", "16",
             "--output-dir", "sweep")
    done = cli(*sweep)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("num_layers=9")]
    assert len(failed) == 1 and "failed: --num-layers 9 is more than the 6 layers" in failed[0]
    assert done.stderr.strip().splitlines()[-1].startswith("adaptive-exit: error: 1 of 2 configurations failed")
    table = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    assert [(g["configuration"], g["runs"], g["failed"]) for g in table["groups"]] == [
        ("num_layers=9", 0, 1), ("num_layers=1", 1, 0)]
    assert (tmp_path / "sweep" / "num_layers=1" / "adaptive_exit.json").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["movie-reviews"]).set_index("tags.mlflow.runName")
    assert runs.loc["num_layers=9", "status"] == "FAILED"
    assert runs.loc["num_layers=9", "tags.adaptive_exit.error"].startswith("--num-layers 9 is more than")
    assert runs.loc["num_layers=1", "status"] == "FINISHED"
    parent = runs[runs["tags.adaptive_exit.command"] == "sweep"].iloc[0]
    assert parent.status == "FAILED" and parent["tags.adaptive_exit.error"].startswith("1 of 2 configurations")

    assert "--resume to continue the sweep" in cli(*sweep).stderr
    assert "holds no sweep to resume" in cli(*sweep[:-1], "elsewhere", "--resume").stderr
    again = cli(*sweep, "--resume")
    assert again.returncode == 1, again.stderr[-3000:]
    assert "sweep: num_layers=1 was trained before; its model is in sweep/num_layers=1" in again.stderr
    table = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    assert [(g["configuration"], g["runs"], g["failed"]) for g in table["groups"]] == [
        ("num_layers=9", 0, 1), ("num_layers=1", 1, 0)]
    runs = mlflow.search_runs(experiment_names=["movie-reviews"])
    parents = runs[runs["tags.adaptive_exit.command"] == "sweep"]
    assert len(parents) == 1 and "--resume" in parents["tags.adaptive_exit.resumed"].iloc[0]  # the same parent run
    children = runs[runs["tags.adaptive_exit.command"] == "train"]
    assert sorted(children["tags.mlflow.runName"]) == ["num_layers=1", "num_layers=9", "num_layers=9"]
    assert set(children["tags.mlflow.parentRunId"]) == {parents.run_id.iloc[0]}
