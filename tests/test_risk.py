"""Risk-controlled calibration: the exact binomial p-values and Clopper-Pearson bounds against hand-computed values,
fixed-sequence testing, the promise itself on a synthetic case with known risks, and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adaptive_exit.risk import certify, fixed_sequence, p_value, samples_needed, upper_bound

from contract_helpers import offline, run, usage_error  # noqa: F401 (fixtures)


def test_p_values_are_the_binomial_tail() -> None:
    assert p_value(0, 10, 0.1) == pytest.approx(0.9 ** 10, rel=1e-12)  # 0.3487: no loss in 10 proves little
    assert p_value(1, 10, 0.1) == pytest.approx(0.9 ** 10 + 10 * 0.1 * 0.9 ** 9, rel=1e-12)  # 0.7361
    assert p_value(0, 230, 0.01) == pytest.approx(0.99 ** 230, rel=1e-12)  # 0.0991 <= 0.1
    assert p_value(10, 10, 0.3) == 1.0


def test_upper_bounds_are_clopper_pearson() -> None:
    assert upper_bound(0, 10, 0.1) == pytest.approx(1 - 0.1 ** (1 / 10), rel=1e-9)  # (1 - u)^10 = 0.1: u = 0.2057
    u = upper_bound(1, 10, 0.1)  # (1 - u)^10 + 10 u (1 - u)^9 = 0.1
    assert (1 - u) ** 10 + 10 * u * (1 - u) ** 9 == pytest.approx(0.1, rel=1e-9) and u == pytest.approx(0.3368, 1e-3)
    assert upper_bound(5, 5, 0.1) == 1.0
    assert samples_needed(0.01, 0.1) == 230 and 0.99 ** 229 > 0.1 >= 0.99 ** 230
    assert samples_needed(0.02, 0.1) == 114


def test_fixed_sequence_stops_at_the_first_failure_and_reads_no_further() -> None:
    assert fixed_sequence([0.01, 0.05, 0.2, 0.01], 0.1) == 2
    assert fixed_sequence([0.5, 0.01], 0.1) == 0
    assert fixed_sequence([0.01, 0.02], 0.1) == 2

    def p_values():
        yield 0.01
        yield 0.3
        raise AssertionError("read past the first failure")

    assert fixed_sequence(p_values(), 0.1) == 1


def test_certify_picks_the_last_threshold_that_passes() -> None:
    # 300 samples; thresholds with 0, 0, 2, 30 losses; epsilon 5%: P(Bin(300, .05) <= 2) is tiny, <= 30 is not
    losses = torch.zeros(4, 300, dtype=torch.int64)
    losses[2, :2] = 1
    losses[3, :30] = 1
    found = certify(losses.sum(1).tolist(), 300, [1.0, 1.2, 1.5, 2.5], [0.1, 0.2, 0.3, 0.4], 0.05, 0.1)
    assert (found.threshold, found.speedup, found.passed, found.risk) == (0.3, 1.5, 3, 2 / 300)
    assert found.upper_bound == pytest.approx(upper_bound(2, 300, 0.1))
    assert certify([0, 0, 0], 20, [1.0] * 3, [0.1] * 3, 0.05, 0.1).threshold is None  # 0.95^20 = 0.36 > 0.1


def test_the_promise_holds_on_a_synthetic_case_with_known_risks() -> None:
    """21 thresholds whose true risks rise by 0.2 points each (those past the 10th exceed epsilon = 2 points); losses
    nested as in early exit (a sample lost at one threshold is lost at every more aggressive one). Over 2,000 draws
    of 1,000 calibration samples the chosen threshold's true risk exceeds epsilon in at most delta = 10% of draws, up
    to binomial noise: 3 standard deviations of a rate of 0.1 over 2,000 draws is 0.02."""
    generator = torch.Generator().manual_seed(0)
    true_risk = torch.arange(21, dtype=torch.float64) * 0.002
    draws, violations, chosen_risks = 2000, 0, []
    for _ in range(draws):
        uniform = torch.rand(1, 1000, generator=generator, dtype=torch.float64)
        losses = (uniform < true_risk[:, None]).to(torch.int64)
        found = certify(losses.sum(1).tolist(), 1000, true_risk.tolist(), list(range(21)), 0.02, 0.1)
        risk = 0.0 if found.threshold is None else float(true_risk[found.threshold])
        chosen_risks.append(risk)
        violations += risk > 0.02 + 1e-12
    rate = violations / draws
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / draws), rate
    assert sum(chosen_risks) / draws > 0.01  # and it is not vacuous: it certifies more than half the budget


@pytest.fixture
def reviews(tmp_path):
    """300 unlabelled movie-review-like texts as JSON lines (no label field)."""
    openings = ["a gripping", "a dull", "an overlong", "a lovely", "a clumsy", "a moving", "a lazy", "a sharp",
                "a tedious", "a charming"]
    things = ["film", "drama", "comedy", "thriller", "story", "script", "cast", "ending", "score", "debut"]
    endings = ["", " that works", " with no heart", " worth seeing"]
    texts = [f"{o} {t}{e}" for o in openings for t in things for e in endings][:300]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def test_disagreement_is_calibrated_on_unlabelled_texts(trained_model, reviews, offline, capsys, tmp_path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    code, out, err = run(capsys, "calibrate", str(model), "--risk", "disagreement", "--max-risk", "5", "--delta",
                         "0.1", "--input", str(reviews), "--json")
    assert code == 0, err
    stored = json.loads(out)
    assert stored["rule"] == "max-risk" and stored["risk"] == "disagreement" and stored["samples"] == 300
    assert stored["split"] == str(reviews) and "metric" not in stored
    assert stored["empirical_risk"] <= stored["certified_bound"] <= 0.05
    assert json.loads((model / "adaptive_exit.json").read_text())["calibration"] == stored
    code, out, err = run(capsys, "calibrate", str(model), "--max-risk", "5", "--input", str(reviews))
    usage_error(code, err, "the accuracy-drop risk needs labels, and --input has none; use --risk disagreement")


def test_too_few_samples_say_how_many_are_needed(trained_model, offline, capsys, tmp_path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    code, out, err = run(capsys, "calibrate", str(model), "--max-risk", "1", "--delta", "0.1", "--no-track",
                         "--max-eval-samples", "48")
    usage_error(code, err, "no threshold can be certified: 48 calibration samples are too few", "at least 230")
    code, out, err = run(capsys, "calibrate", str(model), "--max-risk", "1", "--delta", "1.5", "--no-track")
    usage_error(code, err, "--delta must be a probability between 0 and 1")


def test_evaluate_json_carries_the_upper_bounds(trained_model, offline, capsys) -> None:
    code, out, err = run(capsys, "evaluate", str(trained_model), "--no-track", "--json", "--max-eval-samples", "48",
                         "--delta", "0.05")
    assert code == 0, err
    curve = json.loads(out)["curve"]
    for point in curve:
        risk = point["risk"]
        assert 0 <= risk["accuracy_drop"] <= risk["disagreement"] <= risk["disagreement_ucb"] <= 1
        assert risk["accuracy_drop"] <= risk["accuracy_drop_ucb"]
        assert risk["accuracy_drop_ucb"] == pytest.approx(upper_bound(round(48 * risk["accuracy_drop"]), 48, 0.05))
    assert min(p["risk"]["disagreement"] for p in curve) == 0.0  # no early exit: never a disagreement
