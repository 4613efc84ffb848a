"""The baselines plugin: hand-computed losses, exit layers and schedules, and real training stages."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_exit import ExitOutputs, MultiExitModel, simulate_exits, sweep
from adaptive_exit.backbones import HuggingFace
from adaptive_exit.config import RunConfig
from adaptive_exit.training import Trainable, make_optimizer, train_step
from adaptive_exit_baselines.signals import LearnToExit, Patience, PatienceConfidence, Static, lte_target
from adaptive_exit_baselines.weightings import (Alternating, TwoStage, WeightedAverage, final_exit_parameters,
                                                weighted_average_loss)


def outputs_from_predictions(predictions: list[list[int]], confidence: list[list[float]] | None = None) -> ExitOutputs:
    """Two-class logits whose argmax is ``predictions[exit][sample]`` with top probability ``confidence``."""
    predicted = torch.tensor(predictions)
    p = torch.tensor(confidence) if confidence is not None else torch.full(predicted.shape, 0.9)
    gap = torch.log(p / (1 - p))
    logits = torch.zeros(*predicted.shape, 2)
    logits.scatter_(2, predicted.unsqueeze(-1), gap.unsqueeze(-1))
    return ExitOutputs(logits, torch.zeros(*predicted.shape, 4))


def make(cls, exits: int, **options):
    return cls(cls.Options(**options), num_exits=exits, hidden_size=4, num_labels=2)


def test_weighted_average_loss_by_hand():
    ce = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.5, 1.5]])  # exit means 2, 2, 1
    # (1·2 + 2·2 + 3·1) / (1 + 2 + 3) = 9 / 6
    assert float(weighted_average_loss(ce)) == pytest.approx(1.5)
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # exit 1: CE ln 2; exit 2: CE -ln 0.75
    got = WeightedAverage(num_exits=2, total_steps=1, signal=None).loss(ExitOutputs(logits, logits), torch.tensor([1]), 0)
    assert float(got.total) == pytest.approx((math.log(2) + 2 * -math.log(0.75)) / 3)


# 5 exits (rows) for 4 samples (columns); sample 3 never has two equal predictions in a row
PREDICTIONS = [[0, 1, 0, 1],
               [0, 0, 1, 1],
               [0, 0, 0, 1],
               [1, 0, 1, 1],
               [1, 0, 0, 1]]


def test_patience_counts_and_exit_layers():
    signal = make(Patience, 5)
    scores = signal.score(outputs_from_predictions(PREDICTIONS))
    assert scores.t().tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4]]
    exits = simulate_exits(scores, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), signal.exit_when)
    # patience 0: all leave at exit 1; 1: the first repeat; 2: two repeats; sample 3 always runs to the end
    assert exits.tolist() == [[0, 0, 0, 0], [1, 2, 4, 1], [2, 3, 4, 2], [4, 4, 4, 3], [4, 4, 4, 4]]
    assert signal.thresholds(scores).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


CONFIDENCE = [[0.95, 0.60, 0.90, 0.99],
              [0.70, 0.95, 0.90, 0.99],
              [0.95, 0.96, 0.50, 0.99],
              [0.97, 0.97, 0.90, 0.99]]


def test_patience_confidence_needs_every_exit_of_the_window_confident():
    signal = make(PatienceConfidence, 4, patience=2)
    outputs = outputs_from_predictions([[0] * 4] * 4, CONFIDENCE)
    scores = signal.score(outputs)
    expected = [[0, 0, 0, 0], [0.70, 0.60, 0.90, 0.99], [0.70, 0.95, 0.50, 0.99], [0.95, 0.96, 0.50, 0.99]]
    assert scores.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    exits = simulate_exits(scores, torch.tensor([0.8, 0.0]), signal.exit_when)
    # at 0.8: sample 0 waits for exits 3-4 (0.95, 0.97) -> the last; sample 1 leaves after exits 2-3;
    # sample 2 is held back by exit 3 (0.50); sample 3 leaves as soon as two exits exist
    assert exits.tolist() == [[3, 2, 1, 1], [1, 1, 1, 1]]
    grid = signal.thresholds(scores)
    assert float(grid.min()) >= 0.0  # no threshold lets a sample leave before its window is full
    fastest, slowest = simulate_exits(scores, grid[[0, -1]], signal.exit_when).tolist()
    assert fastest == [1, 1, 1, 1] and slowest == [3, 3, 3, 3]


def test_patience_confidence_window_longer_than_the_model_never_exits_early():
    signal = make(PatienceConfidence, 3, patience=3)
    scores = signal.score(outputs_from_predictions([[0] * 2] * 3, [[0.99, 0.99]] * 3))
    assert simulate_exits(scores, signal.thresholds(scores), ">").unique().tolist() == [2]


def test_static_exits_everyone_at_layer_k():
    signal = make(Static, 4)
    outputs = outputs_from_predictions(PREDICTIONS[:4])
    result = sweep(outputs, torch.tensor([0, 0, 1, 1]), signal)
    assert [p.threshold for p in result.curve] == [1.0, 2.0, 3.0, 4.0]
    assert [p.speedup for p in result.curve] == [4.0, 2.0, pytest.approx(4 / 3), 1.0]
    assert [p.exit_counts for p in result.curve] == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 4]]
    # exit 2 predicts 0, 0, 1, 1: all right
    assert result.curve[1].metric == 1.0


def test_lte_target_and_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    labels = torch.tensor([0, 1])
    assert lte_target(logits, labels).tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    signal = make(LearnToExit, 3)
    with torch.no_grad():
        signal.certainty.weight.zero_()
        signal.certainty.bias.fill_(math.log(3.0))  # sigmoid = 0.75 everywhere
    loss = signal.loss(ExitOutputs(logits, torch.randn(3, 2, 4)), labels)
    # internal exits only: errors 0.25, 0.25, 0.75, 0.25 -> (3·0.0625 + 0.5625) / 4
    assert float(loss.detach()) == pytest.approx((3 * 0.0625 + 0.5625) / 4)


def test_alternating_schedule():
    weighting = Alternating(num_exits=3, total_steps=6, signal=None)
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]], [[0.0, 0.0]]])
    labels = torch.tensor([1])
    final, joint = math.log(2), (2 * math.log(2) - math.log(0.75)) / 3
    got = [float(weighting.loss(ExitOutputs(logits, logits), labels, step).total) for step in range(4)]
    assert got == [pytest.approx(v) for v in (final, joint, final, joint)]


def test_two_stage_schedule_and_losses():
    weighting = TwoStage(num_exits=3, total_steps=5, signal=None)
    assert [weighting.stage(s) for s in range(5)] == [1, 1, 2, 2, 2]
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]], [[0.0, math.log(3.0)]]])
    labels = torch.tensor([1])
    assert float(weighting.loss(ExitOutputs(logits, logits), labels, 0).total) == pytest.approx(-math.log(0.75))
    assert float(weighting.loss(ExitOutputs(logits, logits), labels, 3).total) == pytest.approx(math.log(2) - math.log(0.75))


def snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def test_two_stage_trains_then_freezes_exactly_on_a_real_model():
    torch.manual_seed(0)
    encoder = HuggingFace().load("minilm-l6", 1 + 1)
    config = RunConfig()
    model = MultiExitModel(encoder, {"num_labels": 2, "pooling": "mean", "dropout": 0.1})
    signal = make(Patience, model.num_exits)
    weighting = TwoStage(num_exits=model.num_exits, total_steps=4, signal=signal)
    optimizer = make_optimizer(model, signal, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = encoder.tokenizer(["a fine film", "dull and long", "great", "bad acting"], padding=True,
                               return_tensors="pt")
    batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
             "labels": torch.tensor([1, 0, 1, 0])}
    model.train()
    forward = Trainable(model, signal)
    internal_head = list(model.heads[0].parameters())
    history = [(snapshot(final_exit_parameters(model)), snapshot(internal_head))]
    for step in range(4):
        train_step(forward, model, signal, weighting, optimizer, scheduler, batch, step, 1.0)
        history.append((snapshot(final_exit_parameters(model)), snapshot(internal_head)))

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    # stage 1 (steps 0, 1): encoder and final classifier move, the internal exit does not
    assert not same(history[0][0], history[1][0]) and not same(history[1][0], history[2][0])
    assert same(history[0][1], history[2][1])
    # stage 2 (steps 2, 3): encoder and final classifier stay bit for bit, the internal exit moves
    assert same(history[2][0], history[4][0])
    assert not same(history[2][1], history[3][1]) and not same(history[3][1], history[4][1])


def test_lte_loss_falls_in_a_real_training(cli, tmp_path):
    done = cli("train", "--num-layers", "2", "--max-length", "32", "--epochs", "2", "--batch-size", "16",
               "--weighting", "alternating", "--signal", "lte", "--max-train-samples", "320",
               "--max-eval-samples", "32", "--head-lr", "3e-3", "--output-dir", "model")
    assert done.returncode == 0, done.stderr[-2000:]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["movie-reviews"], output_format="list")[0]
    history = [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run.info.run_id, "signal_loss"),
                                       key=lambda m: m.step)]
    assert len(history) == 40
    # epoch means: each epoch sees every sample once, while length-grouped batches make short windows of steps
    # differ in length and difficulty
    first, last = sum(history[:20]) / 20, sum(history[20:]) / 20
    assert last < 0.96 * first, (first, last)  # measured: 0.251 -> 0.228
    assert (tmp_path / "model" / "signal.safetensors").is_file()
