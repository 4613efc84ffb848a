"""COSEE's pieces checked against values computed by hand."""

import math

import pytest
import torch

from adaptive_exit import ExitOutputs, exit_cross_entropy, simulate_exits
from adaptive_exit.signals import Entropy
from adaptive_exit_cosee import (Cosee, CoseeOptions, adjust_weights, beta_at, distillation_loss, exit_shares,
                                 osc_loss, sample_weights, thresholds_at_quantiles, weight_matrix, weighted_cross_entropy)


def test_weight_matrix_at_beta_zero_is_uniform():
    assert torch.allclose(weight_matrix(4, 0.0), torch.full((4, 4), 0.25, dtype=torch.float64))


def test_weight_matrix_at_beta_one():
    e1, e2 = math.exp(-1), math.exp(-2)
    expected = torch.tensor([
        [1 / (1 + e1 + e2), e1 / (1 + e1 + e2), e2 / (1 + e1 + e2)],  # 0.66524, 0.24473, 0.09003
        [e1 / (1 + 2 * e1), 1 / (1 + 2 * e1), e1 / (1 + 2 * e1)],      # 0.21194, 0.57612, 0.21194
        [e2 / (1 + e1 + e2), e1 / (1 + e1 + e2), 1 / (1 + e1 + e2)],
    ], dtype=torch.float64)
    got = weight_matrix(3, 1.0)
    assert torch.allclose(got, expected)
    assert got[0].tolist() == pytest.approx([0.66524096, 0.24472847, 0.09003057])
    assert got.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_beta_schedule_rises_linearly_from_zero():
    assert beta_at(0, 100, 10.0) == 0.0
    assert beta_at(25, 100, 10.0) == 2.5
    assert beta_at(100, 100, 10.0) == 10.0


def test_beta_warmup_holds_zero_then_rises_to_beta0():
    assert beta_at(25, 100, 10.0, warmup=0.5) == 0.0
    assert beta_at(50, 100, 10.0, warmup=0.5) == 0.0
    assert beta_at(75, 100, 10.0, warmup=0.5) == pytest.approx(5.0)
    assert beta_at(100, 100, 10.0, warmup=0.5) == pytest.approx(10.0)


def test_distillation_loss_weights_kl_by_the_deficit_below_uniform():
    # exit 1 says (0.5, 0.5) for both samples, the final exit (0.75, 0.25):
    # KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812; sample 1's exit-1 weight 0.2 is 0.3 below 1/2, sample 2's is above
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],
                           [[math.log(3.0), 0.0], [math.log(3.0), 0.0]]], requires_grad=True)
    weights = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = distillation_loss(logits, weights)
    assert float(loss.detach()) == pytest.approx(0.3 * kl / 2, rel=1e-6)  # 0.0196218
    loss.backward()
    assert logits.grad[1].abs().sum() == 0  # the final exit is the teacher and gets no gradient


# scores of 3 exits (rows) for 4 samples (columns); the last row is never consulted
SCORES = torch.tensor([[0.5, 0.1, 0.9, 0.3],
                       [0.2, 0.8, 0.9, 0.3],
                       [0.0, 0.0, 0.0, 0.0]])


def test_exit_simulation_below_rule():
    got = simulate_exits(SCORES, torch.tensor([0.25, 0.6, 0.95]), "<")
    # tau 0.25: s0 exits at exit 2 (0.2), s1 at exit 1 (0.1), s2 never (last), s3 never (0.3 is not < 0.25)
    assert got.tolist() == [[1, 0, 2, 2], [0, 0, 2, 0], [0, 0, 0, 0]]


def test_exit_simulation_above_rule():
    got = simulate_exits(SCORES, torch.tensor([0.85, 0.3]), ">")
    # tau 0.85: s2 exits at 1 (0.9); s0, s1 (0.8 not > 0.85), s3 never exit early
    # tau 0.3: s0 at 1 (0.5), s1 at 2 (0.8), s2 at 1, s3 never (0.3 is not > 0.3: strict)
    assert got.tolist() == [[2, 2, 0, 2], [0, 1, 0, 2]]


def test_exit_simulation_inclusive_rule_and_nan():
    scores = torch.tensor([[0.3, float("nan")], [0.3, float("nan")], [0.0, 0.0]])
    assert simulate_exits(scores, torch.tensor([0.3]), ">=").tolist() == [[0, 2]]


def test_k_threshold_loss_is_mean_of_single_threshold_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scores = Entropy(num_exits=4, hidden_size=1, num_labels=3).score(ExitOutputs(logits, torch.zeros(4, 6, 1)))
    thresholds = torch.tensor([0.2, 0.5, 0.8, 0.95, 0.99])
    ce = exit_cross_entropy(logits, labels)
    together = weighted_cross_entropy(ce, sample_weights(scores, thresholds, "<", 1.5))
    one_by_one = []
    for tau in thresholds.tolist():
        w = weight_matrix(4, 1.5)[simulate_exits(scores, torch.tensor([tau]), "<")[0]]  # [batch, exits]
        one_by_one.append(sum(float(w[n, m]) * float(ce[m, n]) for n in range(6) for m in range(4)) / 6)
    assert float(together) == pytest.approx(sum(one_by_one) / len(one_by_one), rel=1e-6)


def test_osc_skips_layers_whose_batch_is_all_correct_or_all_wrong():
    labels = torch.tensor([0, 0, 1])
    logits = torch.tensor([
        [[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]],   # exit 1: all correct -> skipped
        [[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]],   # exit 2: sample 0 correct, 1 and 2 wrong
        [[0.0, 5.0], [0.0, 5.0], [5.0, 0.0]],   # exit 3: all wrong, but the last exit is never used
    ])
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.7], [0.9, 0.9, 0.9]])
    # exit 2, rising signal: hinge(mean correct 0.4 - mean wrong 0.6 + 0.3) = 0.1, averaged over 1 layer
    assert float(osc_loss(scores, logits, labels, 0.3, "<")) == pytest.approx(0.1)
    # falling signal: hinge(mean wrong 0.6 - mean correct 0.4 + 0.3) = 0.5
    assert float(osc_loss(scores, logits, labels, 0.3, ">")) == pytest.approx(0.5)
    all_correct = logits[:1].repeat(3, 1, 1)
    assert float(osc_loss(scores, all_correct, labels, 0.3, "<")) == 0.0


def test_osc_gradient_flows_through_signal():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    signal = Entropy(num_exits=2, hidden_size=1, num_labels=2)
    scores = signal.score(ExitOutputs(logits, torch.zeros(2, 2, 1)))
    osc_loss(scores, logits, torch.tensor([0, 0]), 0.5, "<").backward()  # hinge active: 0.527 - 0.840 + 0.5 > 0
    assert logits.grad[0].abs().sum() > 0


def test_cosee_loss_at_step_zero_equals_uniform_mean():
    torch.manual_seed(1)
    logits, labels = torch.randn(3, 5, 2), torch.tensor([0, 1, 1, 0, 1])
    signal = Entropy(num_exits=3, hidden_size=1, num_labels=2)
    weighting = Cosee(CoseeOptions(osc=False), signal=signal, num_exits=3, total_steps=10)
    got = weighting.loss(ExitOutputs(logits, torch.zeros(3, 5, 1)), labels, step=0)
    assert float(got.total) == pytest.approx(float(exit_cross_entropy(logits, labels).mean()), rel=1e-6)
    assert got.logs["beta_t"] == 0.0


def test_cosee_threshold_range_follows_previous_epoch():
    signal = Entropy(num_exits=2, hidden_size=1, num_labels=2)
    weighting = Cosee(signal=signal, num_exits=2, total_steps=4)
    assert weighting.threshold_range == (0.0, 1.0)
    logits = torch.tensor([[[2.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    weighting.loss(ExitOutputs(logits, torch.zeros(2, 2, 1)), torch.tensor([0, 0]), step=0)
    weighting.end_epoch(0)
    internal = signal.score(ExitOutputs(logits, torch.zeros(2, 2, 1)))[0]
    assert weighting.threshold_range == pytest.approx((float(internal.min()), float(internal.max())))


def test_no_swm_keeps_uniform_weights_at_any_step():
    torch.manual_seed(2)
    logits, labels = torch.randn(3, 4, 2), torch.tensor([0, 1, 0, 1])
    signal = Entropy(num_exits=3, hidden_size=1, num_labels=2)
    weighting = Cosee(CoseeOptions(swm=False, osc=False), signal=signal, num_exits=3, total_steps=10)
    got = weighting.loss(ExitOutputs(logits, torch.zeros(3, 4, 1)), labels, step=10)
    assert float(got.total) == pytest.approx(float(exit_cross_entropy(logits, labels).mean()), rel=1e-6)


def test_mixing_with_uniform_weights_floors_every_exit():
    weights = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    # (1 - 0.5) * w + 0.5 / 2: 0.45 + 0.25 = 0.7, 0.05 + 0.25 = 0.3
    assert torch.allclose(adjust_weights(weights, 0.5, False), torch.tensor([[0.7, 0.3], [0.5, 0.5]]))
    assert torch.equal(adjust_weights(weights, 0.0, False), weights)


def test_per_exit_normalisation_gives_every_exit_mean_one_over_m():
    weights = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    # column means 0.7 and 0.3; each column divided by M * mean = 1.4 and 0.6
    got = adjust_weights(weights, 0.0, True)
    assert torch.allclose(got, torch.tensor([[0.9 / 1.4, 0.1 / 0.6], [0.5 / 1.4, 0.5 / 0.6]]))
    assert got.mean(0).tolist() == pytest.approx([0.5, 0.5])


def test_thresholds_at_quantiles_of_the_batch_signals():
    scores = torch.tensor([[0.1, 0.3, float("nan")], [0.5, 0.2, 0.4]])
    # finite values sorted: 0.1 0.2 0.3 0.4 0.5; quantile 0 -> 0.1, 0.5 -> 0.3, 0.25 -> 0.2, 1 -> 0.5
    got = thresholds_at_quantiles(scores, torch.tensor([0.0, 0.5, 0.25, 1.0], dtype=torch.float64))
    assert got.tolist() == pytest.approx([0.1, 0.3, 0.2, 0.5])


def test_exit_shares_of_weight_and_simulated_exits():
    weights = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.5, 0.5]])
    exit_index = torch.tensor([[0, 2], [2, 2]])  # 2 thresholds x 2 samples: exit 1 once, exit 3 three times
    got = exit_shares(weights, exit_index)
    assert [got[f"cosee_weight/exit_{k}"] for k in (1, 2, 3)] == pytest.approx([0.25, 0.375, 0.375])
    assert [got[f"cosee_exits/exit_{k}"] for k in (1, 2, 3)] == pytest.approx([0.25, 0.0, 0.75])


def test_paper_preset_turns_every_departure_off():
    paper = CoseeOptions(preset="paper")
    assert (paper.mix, paper.per_exit_norm, paper.quantile_thresholds, paper.warmup, paper.distill) == (
        0.0, False, False, 0.0, 0.0)
    with pytest.raises(ValueError, match="drop --mix"):
        CoseeOptions(preset="paper", mix=0.3)
    with pytest.raises(ValueError, match="drop --distill"):
        CoseeOptions(preset="paper", distill=1.0)


@pytest.mark.parametrize(("preset", "mix", "distill"), [("adaptive-exit", 0.6, 1.0), ("paper", 0.0, 0.0)])
def test_loss_is_the_paper_weights_mixed_plus_distillation(preset, mix, distill):
    # the defaults mix the paper's weights with uniform ones and distil into the starved exits; the paper
    # preset is Eq. 2 + alpha * OSC exactly
    torch.manual_seed(4)
    logits, labels = torch.randn(3, 6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    outputs = ExitOutputs(logits, torch.zeros(3, 6, 1))
    signal = Entropy(num_exits=3, hidden_size=1, num_labels=2)
    weighting = Cosee(CoseeOptions(preset=preset), signal=signal, num_exits=3, total_steps=10)
    assert (weighting.options.mix, weighting.options.distill) == (mix, distill)
    torch.manual_seed(5)
    thresholds = torch.rand(5, dtype=torch.float64)  # drawn from [0, 1] in the first epoch
    paper = sample_weights(signal.score(outputs), thresholds, "<", beta_at(5, 10, 10.0))
    weights = (1 - mix) * paper + mix / 3
    expected = (weighted_cross_entropy(exit_cross_entropy(logits, labels), weights)
                + 0.1 * osc_loss(signal.score(outputs), logits, labels, 0.3, "<")
                + distill * distillation_loss(logits, weights))
    torch.manual_seed(5)
    got = weighting.loss(outputs, labels, step=5)
    assert float(got.total) == pytest.approx(float(expected), rel=1e-6)
    assert ("cosee_distill" in got.logs) == (distill > 0)


def test_cosee_logs_exit_shares_every_n_steps():
    torch.manual_seed(3)
    logits, labels = torch.randn(3, 4, 2), torch.tensor([0, 1, 0, 1])
    signal = Entropy(num_exits=3, hidden_size=1, num_labels=2)
    weighting = Cosee(CoseeOptions(log_every=5), signal=signal, num_exits=3, total_steps=10)
    outputs = ExitOutputs(logits, torch.zeros(3, 4, 1))
    logged = weighting.loss(outputs, labels, step=5).logs
    assert sum(logged[f"cosee_weight/exit_{k}"] for k in (1, 2, 3)) == pytest.approx(1.0)
    assert sum(logged[f"cosee_exits/exit_{k}"] for k in (1, 2, 3)) == pytest.approx(1.0)
    assert "cosee_weight/exit_1" not in weighting.loss(outputs, labels, step=6).logs


def test_exit_share_metrics_and_plot_in_mlflow(trained_model):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained_model.parent / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    for kind in ("weight", "exits"):
        values = [run.data.metrics[f"cosee_{kind}/exit_{k}"] for k in (1, 2)]
        assert sum(values) == pytest.approx(1.0)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "cosee_weight/exit_1")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"cosee_weight.png", "cosee_exits.png"} <= artifacts
