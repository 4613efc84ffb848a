"""Regression: losses, metrics and signals by hand; the movie-reviews-rating data; the commands end to end."""

import json
import math

import pytest
import torch

from adaptive_exit import ExitOutputs, exit_correct, exit_cross_entropy, exit_losses, simulate_exits
from adaptive_exit.errors import UsageError
from adaptive_exit.metrics import average_ranks, mse, pearson, spearman
from conftest import TINY

from test_cli_errors import assert_usage_error


def outputs_of(values):
    """ExitOutputs of a regression model whose exits predicted ``values`` (``[exits, batch]``)."""
    values = torch.tensor(values, dtype=torch.float32)
    return ExitOutputs(logits=values[..., None], pooled=torch.zeros(*values.shape, 4))


def test_regression_metrics_by_hand():
    assert pearson(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 4, 6, 8])) == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 2, 3, 4]), torch.tensor([8.0, 6, 4, 2])) == pytest.approx(-1.0)
    # centred: (-1, 0, 1) and (-1, 1, 0); sum of products 1, norms √2 and √2
    assert pearson(torch.tensor([1.0, 2, 3]), torch.tensor([1.0, 3, 2])) == pytest.approx(0.5)
    assert pearson(torch.tensor([1.0, 1, 1]), torch.tensor([1.0, 3, 2])) == 0.0  # undefined: no spread
    assert average_ranks(torch.tensor([10.0, 20, 20, 30])).tolist() == [1.0, 2.5, 2.5, 4.0]
    # Pearson of (1, 2, 3, 4) and the tied ranks (1, 2.5, 2.5, 4): 4.5 / (√5 · √4.5)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 20, 30])) == pytest.approx(
        4.5 / math.sqrt(5 * 4.5))
    assert mse(torch.tensor([1.0, 2]), torch.tensor([2.0, 4])) == pytest.approx(2.5)


def test_exit_losses_are_squared_errors_for_float_targets_and_cross_entropy_for_classes():
    values = outputs_of([[0.5, 1.0], [2.0, -1.0]]).logits
    assert exit_losses(values, torch.tensor([1.0, 0.0])).tolist() == [[0.25, 1.0], [1.0, 1.0]]
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([0, 0])
    assert torch.equal(exit_losses(logits, labels), exit_cross_entropy(logits, labels))


def test_a_regression_exit_is_right_where_its_error_is_at_most_the_batch_median():
    values = outputs_of([[1.5, 0.0, 2.1]]).logits  # errors 0.5, 1.0, 0.1 against the targets 1, 1, 2
    assert exit_correct(values, torch.tensor([1.0, 1.0, 2.0])).tolist() == [[True, False, True]]


def test_change_signal_exit_layers_by_hand():
    from adaptive_exit.signals import Change

    signal = Change(num_exits=3, hidden_size=4, num_labels=1)
    scores = signal.score(outputs_of([[1.0, 0.0], [1.5, 0.0], [1.6, 2.0]]))
    assert torch.isnan(scores[0]).all()
    assert scores[1:].flatten().tolist() == pytest.approx([0.5, 0.0, 0.1, 2.0])
    # exit when the change is below 0.2: sample 1 never (it leaves at the last exit), sample 2 at exit 2
    assert simulate_exits(scores, torch.tensor([0.2]), signal.exit_when).tolist() == [[2, 1]]
    signal.target_range = (-4.0, 4.0)
    assert signal.bounds == (0.0, 8.0)


def test_regression_patience_by_hand():
    from adaptive_exit_baselines.signals import Patience

    signal = Patience(Patience.Options(regression_threshold=0.3), num_exits=4, hidden_size=4, num_labels=1)
    # steps 0.2 (agree), 0.7 (not), 0.1 (agree)
    assert signal.score(outputs_of([[1.0], [1.2], [1.9], [2.0]])).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_regression_learning_to_exit_learns_each_exits_error():
    from adaptive_exit_baselines.signals import LearnToExitRegression

    torch.manual_seed(0)
    signal = LearnToExitRegression(num_exits=2, hidden_size=4, num_labels=1)
    outputs = ExitOutputs(logits=torch.tensor([[[2.0]], [[0.5]]]), pooled=torch.randn(2, 1, 4))
    predicted = signal.score(outputs)
    assert bool((predicted >= 0).all())
    # the internal exit's real error is |2 - 1| = 1
    assert float(signal.loss(outputs, torch.tensor([1.0])).detach()) == pytest.approx(float((predicted[0, 0].detach() - 1.0) ** 2))


def test_the_signals_contract_for_regression():
    from adaptive_exit_baselines.signals import LearnToExitRegression, Patience, Static

    from adaptive_exit.signals import Change
    from adaptive_exit.testing import check_signal

    for cls in (Change, Patience, Static, LearnToExitRegression):
        check_signal(cls, task="regression")


def test_a_signal_of_another_task_is_a_one_line_error():
    from adaptive_exit.signals import build_signal

    with pytest.raises(UsageError, match="signal 'entropy' does not support regression; signals for regression: "
                                         "change, lte-regression, patience, static"):
        build_signal("entropy", {}, num_exits=2, hidden_size=4, num_labels=1, task="regression")


def test_labels_follow_the_task_a_dataset_declares():
    from datasets import Dataset

    from adaptive_exit.data import _labels_for_task

    whole = Dataset.from_dict({"text": ["a", "b"], "label": [1, 5]})
    assert _labels_for_task(whole, "regression", "stars").features["label"].dtype == "float32"
    assert _labels_for_task(whole, "classification", "stars") is whole
    with pytest.raises(UsageError, match="stars: the labels are float64 but the dataset declares classification"):
        _labels_for_task(Dataset.from_dict({"text": ["a"], "label": [0.5]}), "classification", "stars")


def test_train_with_a_signal_of_another_task_is_a_one_line_error(cli):
    done = cli("train", "--dataset", "movie-reviews-rating", "--no-track", "--max-train-samples", "8")
    assert_usage_error(done, "signal 'entropy' does not support regression; signals for regression: change")


def test_movie_reviews_rating_has_the_sentences_and_splits_of_movie_reviews(env, monkeypatch):
    from adaptive_exit.config import DataConfig
    from adaptive_exit.data import load_task

    monkeypatch.setenv("ADAPTIVE_EXIT_CACHE", env["ADAPTIVE_EXIT_CACHE"])
    rating = load_task(DataConfig(dataset="movie-reviews-rating"))
    classes = load_task(DataConfig(dataset="movie-reviews"))
    assert rating.task == "regression" and rating.metric == "pearson" and rating.num_outputs == 1
    for split in ("train", "validation", "test"):
        assert rating.splits[split]["text"] == classes.splits[split]["text"]
        assert [int(r > 0) for r in rating.splits[split]["label"]] == classes.splits[split]["label"]
    ratings = rating.splits["train"]["label"]
    assert -4.0 <= min(ratings) < -3.5 and 3.5 < max(ratings) <= 4.0


@pytest.mark.slow  # about 115 s on 2 cores: seven commands; test_local_files_with_numeric_targets trains one by default
def test_train_evaluate_calibrate_predict_and_benchmark_a_regression_model(cli, tmp_path):
    # three layers: change judges exits 2 and 3 (exit 1 has no exit before it)
    done = cli("train", *TINY, "--num-layers", "3", "--dataset", "movie-reviews-rating", "--weighting", "cosee",
               "--signal", "change", "--max-train-samples", "128", "--max-eval-samples", "64", "--output-dir", "model")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pearson" in done.stdout
    saved = json.loads((tmp_path / "model" / "adaptive_exit.json").read_text())
    assert saved["task"] == "regression" and saved["num_labels"] == 1 and saved["metric"] == "pearson"
    result = json.loads(cli("evaluate", "model", "--json", "--no-track", "--check-signal").stdout)
    assert result["metric_name"] == "pearson" and len(result["per_exit_metric"]) == 3
    assert sorted(result["extra"]) == sorted(f"exit_{i}_{name}" for name in ("mse", "spearman") for i in (1, 2, 3))
    assert cli("calibrate", "model", "--target-speedup", "1.5", "--no-track").returncode == 0
    (tmp_path / "texts.txt").write_text("a gripping, funny film\ndull and far too long\n")
    answers = [json.loads(line) for line in cli("predict", "model", "--input", "texts.txt").stdout.splitlines()]
    assert [sorted(a) for a in answers] == [["exit_layer", "value"]] * 2
    assert all(math.isfinite(a["value"]) and a["exit_layer"] in (2, 3) for a in answers)
    bench = cli("benchmark", "model", "--batch-sizes", "1", "7", "--repeats", "1", "--max-eval-samples", "16")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert_usage_error(cli("evaluate", "model", "--signal", "entropy", "--no-track"),
                       "signal 'entropy' does not support regression")


def test_local_files_with_numeric_targets(cli, tmp_path):
    rows = "\n".join(f"{'good' if i % 2 else 'bad'} film number {i},{(i % 9) - 4 + 0.5}" for i in range(40))
    (tmp_path / "scores.csv").write_text("text,label\n" + rows + "\n")
    assert_usage_error(cli("train", "--dataset", "csv", "--train-file", "scores.csv", "--no-track"),
                       "not a whole number", "--task regression")
    done = cli("train", *TINY, "--dataset", "csv", "--train-file", "scores.csv", "--task", "regression",
               "--signal", "change", "--no-track", "--output-dir", "model")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "model" / "adaptive_exit.json").read_text())["task"] == "regression"
    assert_usage_error(cli("train", "--task", "regression", "--no-track", "--max-train-samples", "8"),
                       "dataset 'movie-reviews' is classification; drop --task regression")
