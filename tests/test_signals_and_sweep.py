"""Built-in signals and the threshold sweep, on hand-made exit outputs."""

import math

import pytest
import torch

from adaptive_exit import ExitOutputs, layer_speedup, sweep
from adaptive_exit.evaluation import CurvePoint, summarize_curve
from adaptive_exit.signals import Energy, Entropy, MaxProb


def outputs(logits):
    logits = torch.tensor(logits, dtype=torch.float32)
    return ExitOutputs(logits, torch.zeros(*logits.shape[:2], 1))


def make(cls, exits=1, temperature=1.0):
    return cls(cls.Options(temperature=temperature), num_exits=exits, hidden_size=1, num_labels=2)


def test_entropy_is_normalized():
    got = make(Entropy).score(outputs([[[0.0, 0.0], [math.log(3.0), 0.0]]]))
    # uniform -> 1; p = (0.75, 0.25) -> -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 2 = 0.811278
    assert got[0].tolist() == pytest.approx([1.0, 0.8112781], rel=1e-5)


def test_maxprob_and_temperature():
    assert make(MaxProb).score(outputs([[[math.log(3.0), 0.0]]]))[0, 0] == pytest.approx(0.75)
    # T = 2 halves the logit gap: softmax(ln3/2, 0) = sqrt(3) / (sqrt(3) + 1) = 0.633975
    assert make(MaxProb, temperature=2.0).score(outputs([[[math.log(3.0), 0.0]]]))[0, 0] == pytest.approx(0.6339746)


def test_energy_matches_paper_formula():
    # normalized energy at T=1: 1 / (1 + sum exp(z)); z = (0, ln 2) gives 1 / (1 + 1 + 2) = 0.25
    assert make(Energy).score(outputs([[[0.0, math.log(2.0)]]]))[0, 0] == pytest.approx(0.25)
    # T = 2: 1 / (1 + (sum exp(z/2))^2) with z = (0, 0): 1 / (1 + 4) = 0.2
    assert make(Energy, temperature=2.0).score(outputs([[[0.0, 0.0]]]))[0, 0] == pytest.approx(0.2)


@pytest.mark.parametrize("cls", [Entropy, MaxProb, Energy])
def test_no_nan_or_inf_for_extreme_logits(cls):
    extreme = outputs([[[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0], [88.0, 89.0], [-200.0, -300.0], [2e38, -2e38],
                        [3e38, 0.0]]])
    for temperature in (1.0, 0.5):
        assert torch.isfinite(make(cls, temperature=temperature).score(extreme)).all()


def test_sweep_counts_speedup_and_metric():
    # 2 exits, 4 samples; exit 1 predicts (0, 0, 1, 1), exit 2 predicts (0, 1, 1, 0); labels (0, 1, 1, 1)
    logits = [[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.2]],
              [[3.0, 0.0], [0.0, 3.0], [0.0, 3.0], [3.0, 0.0]]]
    labels = torch.tensor([0, 1, 1, 1])
    signal = make(MaxProb, exits=2)
    result = sweep(outputs(logits), labels, signal, "accuracy", torch.tensor([0.99, 0.7, 0.0]))
    first, second, third = result.curve
    # 0.99: nobody exits early (max probs 0.881, 0.731, 0.953, 0.550) -> exit 2 accuracy 3/4, speed-up 1x
    assert (first.exit_counts, first.speedup, first.metric) == ([0, 4], 1.0, 0.75)
    # 0.7: samples 0, 1, 2 leave at exit 1 -> predictions (0, 0, 1, 0): 2/4; speed-up 2*4/(1+1+1+2) = 1.6
    assert second.exit_counts == [3, 1] and second.speedup == pytest.approx(1.6) and second.metric == 0.5
    # 0.0: all leave at exit 1: predictions (0, 0, 1, 1) -> 3/4 at 2x
    assert (third.exit_counts, third.speedup, third.metric) == ([4, 0], 2.0, 0.75)
    assert result.per_exit_metric == [0.75, 0.75]


def test_default_grid_spans_one_to_num_exits():
    torch.manual_seed(0)
    result = sweep(outputs(torch.randn(3, 50, 2).tolist()), torch.randint(0, 2, (50,)), make(Entropy, exits=3))
    speedups = [p.speedup for p in result.curve]
    assert min(speedups) == 1.0 and max(speedups) == 3.0


def test_auc_and_interpolated_marks():
    curve = [CurvePoint(0, 1.0, 0.9, []), CurvePoint(0, 2.0, 0.8, []), CurvePoint(0, 3.0, 0.6, [])]
    auc, at = summarize_curve(curve)
    # trapezoids: (0.9 + 0.8) / 2 + (0.8 + 0.6) / 2 = 1.55 over a span of 2
    assert auc == pytest.approx(0.775)
    assert at == {"1.5": pytest.approx(0.85), "2": pytest.approx(0.8), "3": pytest.approx(0.6), "4": None}
    assert summarize_curve(curve[:2])[1]["3"] is None


def test_layer_speedup_formula():
    assert layer_speedup(torch.tensor([0, 0, 1, 3]), 4) == pytest.approx(4 * 4 / (1 + 1 + 2 + 4))
