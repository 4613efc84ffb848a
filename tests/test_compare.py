"""benchmarks/compare.py renders docs/RESULTS.md from committed result files alone (a small fixture).

The fixture (tests/fixtures/compare/movie-reviews) has 2-exit records with hand-set numbers: joint
training with seeds 1-3 (test AUC 0.70, 0.72, 0.74); three COSEE (adaptive-exit) configurations with
seed 1, of which the one with the best validation AUC among full-range signals (0.65) has seeds 2 and 3
(test AUC 0.76, 0.78, 0.80), while another has a higher validation AUC (0.99) only with a signal whose
curve stops at 1.2x; one of the two COSEE (paper) configurations; no baseline.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "compare"


def load_compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def load_wallclock():
    load_compare()  # wallclock imports compare
    spec = importlib.util.spec_from_file_location("wallclock", ROOT / "benchmarks" / "wallclock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choices_follow_validation_among_full_range_signals():
    compare = load_compare()
    records = compare.load_records(FIXTURE, "movie-reviews")
    cosee = next(m for m in compare.METHODS if m.name == "COSEE (adaptive-exit)")
    assert compare.chosen_config(cosee, records).key == "cosee-mix0.6-distill1-entropy"
    paper = next(m for m in compare.METHODS if m.name == "COSEE (paper)")
    assert compare.chosen_config(paper, records) is None  # cosee-paper-entropy has no seed-1 file yet
    missing = [t.stem for t in compare.missing("movie-reviews", FIXTURE)]
    assert missing == ["cosee-paper-entropy-seed1", "weighted-average-seed1", "two-stage-seed1",
                       "alternating-lte-seed1"]


def test_render_from_the_result_files_alone(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- compare:training-speed -->\nkept\n<!-- /compare:training-speed -->\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--render-from", str(FIXTURE),
               "--results-file", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert "<!-- compare:training-speed -->\nkept\n" in text
    assert ("| joint training | `uniform` | entropy | 1,2,3 | 0.7200 ± 0.0200 | 0.7600 ± 0.0100 | 0.7100 ± 0.0100 "
            "| n/a | n/a | 0.7000 ± 0.0000 |") in text
    assert ("| COSEE (adaptive-exit) | `cosee-mix0.6-distill1-entropy` | entropy | 1,2,3 | 0.7800 ± 0.0200 "
            "| 0.7700 ± 0.0200 | 0.7200 ± 0.0200 | n/a | n/a | 0.6500 ± 0.0000 |") in text
    assert "| COSEE (paper) |" not in text.split("Per-exit")[0]  # no chosen configuration yet
    assert "**Incomplete:** 4 of the trainings named so far have no result yet (then seeds 2 and 3" in text
    assert "| joint training | 0.6300 | 0.8100 |" in text  # per-exit test accuracy, mean over seeds
    assert "it does not beat joint training (1 of 3 counts ahead" in text
    assert "  - AUC: 0.7800 against 0.7200, +0.0600: ahead by more than" in text
    assert "  - accuracy at 2x: 0.7200 against 0.7100, +0.0100: within" in text
    assert "| `cosee-mix0.6-energy` | 1 | **0.600 / 0.600** | 0.990 / 0.950 † |" in text
    assert "**0.650 / 0.780**" in text
    assert (tmp_path / "results-movie-reviews.png").stat().st_size > 10_000
    assert (tmp_path / "cosee-weights-movie-reviews.png").stat().st_size > 10_000
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and results.read_text() == text


def test_a_backbone_is_its_own_study(tmp_path):
    """`--backbone mpnet-base` runs the 12-layer methods into `<dataset>-mpnet-base`, with the backbone flag (snli
    without the baseline); its plan's estimate comes from the other 12-layer study until it has trainings of its own."""
    compare = load_compare()
    name = compare.study("snli", "mpnet-base")
    assert name == "snli-mpnet-base" and compare.study("snli", "minilm-l6") == "snli"
    budget = compare.BUDGETS[name]
    assert budget.dataset == "snli" and budget.flags() == ["--epochs", "2", "--max-train-samples", "2000",
                                                           "--max-eval-samples", "2000", "--backbone", "mpnet-base"]
    assert "(validation and test: their first 2,000 samples)" in budget.describe()
    assert "--backbone" not in compare.BUDGETS["snli"].flags()  # the 6-layer runs keep their command lines
    assert [t.stem for t in compare.missing(name, tmp_path)] == [
        "uniform-seed1", "cosee-mix0.6-distill1-energy-seed1", "cosee-mix0.3-distill1-energy-seed1",
        "cosee-mix0.6-distill2-energy-seed1", "cosee-paper-energy-seed1"]
    assert compare.missing("movie-reviews-mpnet-base", tmp_path)[-1].stem == "weighted-average-seed1"
    assert compare.study_flags(name) == "--dataset snli --backbone mpnet-base"
    (tmp_path / "movie-reviews-mpnet-base").mkdir()
    (tmp_path / "movie-reviews-mpnet-base" / "uniform-seed1.json").write_text('{"train_seconds": 500, '
                                                                              '"eval_seconds": 40}')
    plan = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--dataset", "snli", "--backbone", "mpnet-base",
            "--results", str(tmp_path), "--plan"]
    done = subprocess.run(plan, capture_output=True, text=True)
    assert done.returncode == 0 and "5 trainings named so far are missing, about 45 minutes at the mean of " \
        "movie-reviews-mpnet-base's trainings so far" in done.stdout, done.stderr
    done = subprocess.run([*plan[:3], "movie-reviews-rating", *plan[4:]], capture_output=True, text=True)
    assert done.returncode == 2 and "no comparison of movie-reviews-rating on mpnet-base" in done.stderr


def test_a_deeper_study_is_set_beside_minilm(tmp_path):
    """The 12-layer section compares COSEE's gap to joint training at both depths and draws both side by side.

    The 12-layer files are the fixture's, renamed: joint training as it is; COSEE's defaults with the numbers of
    the fixture's cosee-mix0.6-distill1-entropy (validation AUC 0.65, test 0.76/0.78/0.80, at 2x 0.70/0.72/0.74);
    its two alternatives and the paper's COSEE with those of cosee-paper-energy (validation AUC 0.55)."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(FIXTURE / "movie-reviews", results / "movie-reviews")
    deep = results / "movie-reviews-mpnet-base"
    deep.mkdir()
    source = FIXTURE / "movie-reviews"
    renamed = {f"uniform-seed{k}": ("uniform", f"uniform-seed{k}") for k in (1, 2, 3)}
    renamed |= {f"cosee-mix0.6-distill1-energy-seed{k}": ("cosee-mix0.6-distill1-energy",
                                                           f"cosee-mix0.6-distill1-entropy-seed{k}") for k in (1, 2, 3)}
    renamed |= {f"{key}-seed1": (key, "cosee-paper-energy-seed1") for key in (
        "cosee-mix0.3-distill1-energy", "cosee-mix0.6-distill2-energy", "cosee-paper-energy")}
    for stem, (config, origin) in renamed.items():
        record = json.loads((source / f"{origin}.json").read_text())
        (deep / f"{stem}.json").write_text(json.dumps({**record, "config": config}))
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--render-from", str(results),
                           "--results-file", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = out.read_text().split("<!-- compare:movie-reviews-mpnet-base -->")[1]
    # gaps: AUC 0.78 - 0.72; at 2x 0.72 - 0.71, the larger std 0.02 (COSEE's 0.70/0.72/0.74 against 0.70/0.71/0.72)
    gaps = "| 1,2,3 / 1,2,3 | +0.0600 (std 0.0200) | +0.0100 (std 0.0200) | n/a |"
    assert f"| MiniLM-L6 | COSEE (adaptive-exit) (`cosee-mix0.6-distill1-entropy`) {gaps}" in text
    assert f"| all-mpnet-base-v2 (MPNet, 12 layers) | COSEE (adaptive-exit) (`cosee-mix0.6-distill1-energy`) {gaps}" in text
    assert "it does not beat joint training (1 of 3 counts ahead" in text
    assert (tmp_path / "depths-movie-reviews.png").stat().st_size > 10_000


def test_the_wall_clock_section_says_what_the_stored_threshold_costs_and_buys(tmp_path):
    """benchmarks/wallclock.py: one row per measured model, from its file alone (hand-set numbers)."""
    wallclock = load_wallclock()
    folder = tmp_path / "wallclock-movie-reviews-mpnet-base"
    folder.mkdir()
    timing = {"layer_speedup": 2.5, "measured_speedup": 2.0, "efficiency": 0.8}
    record = {"study": "movie-reviews-mpnet-base", "method": "joint training", "config": "uniform", "seed": 1,
              "signal": "maxprob", "threshold": 0.9,
              "test": {"speedup": 2.4, "accuracy": 0.88, "full_accuracy": 0.895, "samples": 1000},
              "benchmark": {"precision": "bf16", "samples": 300,
                            "batch_sizes": {"1": timing, "32": {**timing, "measured_speedup": 2.25, "efficiency": 0.9}}},
              "machine": "a test machine"}
    (folder / "uniform-seed1.json").write_text(json.dumps(record))
    text = wallclock.section(folder)
    assert "on a test machine, bf16" in text and "first 300 of them" in text
    # drop: 100 * (0.895 - 0.88) = 1.5 points
    assert "| joint training (uniform, seed 1) | maxprob | 0.8950 → 0.8800 (+1.5 points) | 2.40x | 2.00x (0.80) | " \
           "2.25x (0.90) |" in text
    with pytest.raises(SystemExit, match="has no result file"):
        wallclock.measure(tmp_path / "elsewhere-seed1", "movie-reviews-mpnet-base", tmp_path, 300, 3)


def test_the_wall_clock_refuses_a_model_trained_otherwise_than_its_result_file(tmp_path):
    """A model directory renamed after another training's file would be reported under the wrong method."""
    wallclock = load_wallclock()
    study = tmp_path / "movie-reviews-mpnet-base"
    study.mkdir()
    flags = ["--weighting", "cosee", "--mix", "0.6", "--distill", "2", "--signal", "energy", "--dataset",
             "movie-reviews", "--seed", "1"]
    (study / "cosee-mix0.6-distill2-energy-seed1.json").write_text(json.dumps({"train_flags": flags}))
    model = tmp_path / "cosee-mix0.6-distill2-energy-seed1"
    model.mkdir()
    with pytest.raises(SystemExit, match="not a trained model directory"):
        wallclock.measure(model, "movie-reviews-mpnet-base", tmp_path, 300, 3)
    run = {"weighting": {"name": "cosee", "options": {"mix": 0.0, "distill": 2.0, "preset": "paper"}},
           "signal": {"name": "energy"}, "data": {"dataset": "movie-reviews", "max_train_samples": 2000, "max_eval_samples": None},
           "model": {"backbone": "mpnet-base"}, "train": {"seed": 3, "epochs": 2}}
    (model / "adaptive_exit.json").write_text(json.dumps({"run": run}))
    with pytest.raises(SystemExit, match=r"not trained as its result file says \(--mix 0.6 in the file, 0.0 in the "
                                         r"model; --seed 1 in the file, 3 in the model\)"):
        wallclock.measure(model, "movie-reviews-mpnet-base", tmp_path, 300, 3)
