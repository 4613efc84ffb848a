"""A third-party signal plugin (tests/plugins/adaptive-exit-margin) installed with pip and used from the CLI.

The package is installed with ``pip install --target`` into a temporary directory (never into the
virtualenv) and made visible to the CLI subprocesses through ``PYTHONPATH`` only.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptive_exit import ExitOutputs

from conftest import ROOT, TINY

PACKAGE = ROOT / "tests" / "plugins" / "adaptive-exit-margin"


@pytest.fixture(scope="module")
def margin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed ``adaptive-exit-margin`` package (installed once per module)."""
    workdir = tmp_path_factory.mktemp("margin-plugin")
    source = workdir / "src"
    # build from a copy so that pip's in-tree build leaves no build/ or *.egg-info in the repository
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = workdir / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-input", "--disable-pip-version-check", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "setuptools" in done.stderr:
        pytest.fail("pip install --no-build-isolation failed, probably because setuptools is missing from the "
                    f"virtualenv ({sys.executable}):\n{done.stderr[-3000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "adaptive_exit_margin.py").is_file()
    return site


@pytest.fixture
def margin_env(margin_site: Path) -> dict[str, str]:
    """``extra_env`` for the ``cli`` fixture: the installed plugin on PYTHONPATH (before any existing entries)."""
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(margin_site), *([existing] if existing else [])])}


def _load_margin_module():
    spec = importlib.util.spec_from_file_location("adaptive_exit_margin_source", PACKAGE / "adaptive_exit_margin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _check_curve(result: dict) -> None:
    assert result["signal"] == "margin"
    speedups = [point["speedup"] for point in result["curve"]]
    assert len(speedups) >= 2
    # 2 exits: everyone leaving at exit 1 is 2.0x, everyone going to the end is 1.0x
    assert min(speedups) == pytest.approx(1.0)
    assert max(speedups) == pytest.approx(2.0)
    assert len(result["per_exit_metric"]) == 2


def test_margin_score_by_hand():
    margin = _load_margin_module().Margin(num_exits=2, hidden_size=4, num_labels=3)
    # exit 1, sample 1: softmax of log(6, 3, 1) = (0.6, 0.3, 0.1) -> 0.6 - 0.3 = 0.3
    # exit 1, sample 2: equal logits -> (1/3, 1/3, 1/3) -> 0.0
    # exit 2, sample 1: softmax of log(8, 1, 1) = (0.8, 0.1, 0.1) -> 0.7
    # exit 2, sample 2: softmax of log(1, 1, 2) = (0.25, 0.25, 0.5) -> 0.25
    logits = torch.log(torch.tensor([[[6.0, 3.0, 1.0], [1.0, 1.0, 1.0]],
                                     [[8.0, 1.0, 1.0], [1.0, 1.0, 2.0]]]))
    got = margin.score(ExitOutputs(logits=logits, pooled=torch.zeros(2, 2, 4)))
    assert got.shape == (2, 2)
    assert got.flatten().tolist() == pytest.approx([0.3, 0.0, 0.7, 0.25], abs=1e-6)
    assert margin.exit_when == ">"


def test_margin_temperature_by_hand():
    module = _load_margin_module()
    margin = module.Margin(module.TemperatureOptions(temperature=2.0), num_exits=1, hidden_size=4, num_labels=2)
    # logits (2 ln 3, 0) / T=2 -> (ln 3, 0) -> softmax (0.75, 0.25) -> margin 0.5
    logits = torch.tensor([[[2 * math.log(3.0), 0.0]]])
    got = margin.score(ExitOutputs(logits=logits, pooled=torch.zeros(1, 1, 4)))
    assert got.flatten().tolist() == pytest.approx([0.5], abs=1e-6)


def test_plugins_lists_margin(cli, margin_env):
    listing = _json(cli("plugins", "--json", extra_env=margin_env))
    margin = [entry for entry in listing["signals"] if entry["name"] == "margin"]
    assert len(margin) == 1, listing["signals"]
    assert margin[0]["plugin"] == "margin"
    assert margin[0]["version"] == "0.1.0"
    assert margin[0]["description"].startswith("Top-1 minus top-2")


def test_train_and_evaluate_with_margin(cli, margin_env, tmp_path):
    done = cli("train", *TINY, "--signal", "margin", "--max-train-samples", "64", "--max-eval-samples", "48",
               "--output-dir", "model", extra_env=margin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "model" / "adaptive_exit.json").read_text())
    assert saved["signal"]["name"] == "margin"

    _check_curve(_json(cli("evaluate", "model", "--json", "--no-track", extra_env=margin_env)))


def test_evaluate_trained_model_with_margin(cli, margin_env, trained_model):
    _check_curve(_json(cli("evaluate", str(trained_model), "--signal", "margin", "--json", "--no-track",
                           extra_env=margin_env)))


def test_margin_meets_the_signal_contract():
    from adaptive_exit.testing import check_signal

    check_signal(_load_margin_module().Margin)
    check_signal(_load_margin_module().Margin, {"temperature": 2.0})


def test_a_regression_signal_through_the_public_api(cli, margin_env):
    from adaptive_exit.testing import check_signal

    drift = _load_margin_module().Drift
    check_signal(drift, task="regression")
    values = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # [exits, batch]
    signal = drift(num_exits=3, hidden_size=4, num_labels=1)
    got = signal.score(ExitOutputs(logits=values[..., None], pooled=torch.zeros(3, 2, 4)))
    # running means: exit 2: 1.5 and 0; exit 3: 1.0 and 1.0
    assert torch.isnan(got[0]).all() and got[1:].flatten().tolist() == pytest.approx([0.5, 0.0, 1.0, 2.0])
    listing = _json(cli("plugins", "--json", extra_env=margin_env))
    assert {e["name"]: e["tasks"] for e in listing["signals"]}["drift"] == ["regression"]
