"""Plugin options on every command that builds a signal or weighting: list and optional fields, shared names with
their qualified forms, each plugin's own default in --help, and errors that name the flag as typed."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import BaseModel, ConfigDict, Field

from adaptive_exit import Weighting, WeightingLoss, exit_cross_entropy
from adaptive_exit.cli import build_run_config, main, make_parser, sweep_children
from adaptive_exit.errors import UsageError
from adaptive_exit.signals import MaxProb

from contract_helpers import offline, register, run, usage_error  # noqa: F401 (fixtures)


class WindowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    windows: list[int] = Field([1], description="exits to look back over")
    floor: float | None = Field(None, description="lowest score (none: no floor)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature")


class Windowed(MaxProb):
    """Maxprob that records the options it was built with."""

    name = "windowed"
    Options = WindowOptions
    built: list[WindowOptions] = []

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        Windowed.built.append(self.options)


class NeedyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: int = Field(description="exits to look back over")


class Needy(MaxProb):
    """A signal with a required option."""

    name = "needy"
    Options = NeedyOptions


class DistillOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="distillation temperature")


class Distill(Weighting):
    """A weighting that shares the option name 'temperature' with the softmax signals."""

    name = "distill-test"
    Options = DistillOptions

    def loss(self, outputs, labels, step):
        return WeightingLoss(exit_cross_entropy(outputs.logits, labels).mean())


@pytest.fixture
def test_plugins(register):
    Windowed.built.clear()
    register(signals=(Windowed, Needy), weightings=(Distill,))


@pytest.fixture
def model_copy(trained_model, tmp_path):
    """The session's trained model (COSEE, entropy, 2 layers), copied: calibrate writes into it."""
    return str(shutil.copytree(trained_model, tmp_path / "model"))


def parsed(*argv: str):
    return make_parser(list(argv)).parse_args(list(argv))


def test_help_shows_each_plugins_default(test_plugins, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--temperature VALUE softmax temperature T applied to the logits [signal energy, entropy, maxprob: "
            "default 1.0; signal windowed: default 2.0; weighting distill-test: default 4.0]") in text
    assert "--windows VALUE exits to look back over [signal windowed: default 1]" in text
    assert "--floor VALUE lowest score (none: no floor) [signal windowed: default none]" in text
    assert "--window VALUE exits to look back over [signal needy: required]" in text
    assert "PydanticUndefined" not in text


def test_shared_name_needs_the_qualified_forms(test_plugins):
    with pytest.raises(UsageError, match=r"^--temperature is an option of both the chosen signal 'entropy' and "
                                         r"weighting 'distill-test'; use --signal.temperature or "
                                         r"--weighting.temperature$"):
        build_run_config(parsed("train", "--weighting", "distill-test", "--temperature", "3"))
    config = build_run_config(parsed("train", "--weighting", "distill-test", "--signal.temperature", "3",
                                     "--weighting.temperature", "0.5"))
    assert config.signal.options == {"temperature": 3.0}
    assert config.weighting.options == {"temperature": 0.5}
    # with a weighting that does not declare it, the short form goes to the signal alone
    assert build_run_config(parsed("train", "--temperature", "3")).signal.options == {"temperature": 3.0}


def test_list_and_optional_options_from_flags(test_plugins):
    config = build_run_config(parsed("train", "--signal", "windowed", "--windows", "1,2, 3", "--floor", "none"))
    assert config.signal.options == {"windows": [1, 2, 3], "floor": None, "temperature": 2.0}
    config = build_run_config(parsed("train", "--signal", "windowed", "--floor", "0.25", "--windows", "4"))
    assert config.signal.options == {"windows": [4], "floor": 0.25, "temperature": 2.0}


@pytest.mark.parametrize("argv, message", [
    (("--signal", "windowed", "--windows", "1,x"), "invalid value for --windows[1]: Input should be a valid integer"),
    (("--signal", "windowed", "--signal.floor", "low"), "invalid value for --signal.floor: Input should be a valid "
                                                        "number"),
    (("--signal", "windowed", "--temperature", "0"), "invalid value for --temperature: Input should be greater than 0"),
    (("--signal", "needy",), "--window is required"),
    (("--signal", "entropy", "--windows", "2"), "--windows is an option of signal 'windowed', not of the chosen "
                                                "signal 'entropy' or weighting 'uniform'"),
])
def test_errors_name_the_flag_as_typed(test_plugins, argv, message):
    with pytest.raises(UsageError) as caught:
        build_run_config(parsed("train", *argv))
    assert str(caught.value).startswith(message), caught.value


def test_sweep_takes_plugin_options(test_plugins, tmp_path):
    children, grid, _, _ = sweep_children(parsed(
        "sweep", "--weighting", "cosee", "--signal", "windowed,entropy", "--beta0", "1,10", "--floor", "0.5",
        "--signal.temperature", "3", "--output-dir", str(tmp_path / "sweep")))
    options = {child.name: (child.config.signal.options, child.config.weighting.options["beta0"])
               for child in children}
    assert options == {
        "signal=windowed beta0=1": ({"windows": [1], "floor": 0.5, "temperature": 3.0}, 1.0),
        "signal=windowed beta0=10": ({"windows": [1], "floor": 0.5, "temperature": 3.0}, 10.0),
        "signal=entropy beta0=1": ({"temperature": 3.0}, 1.0),
        "signal=entropy beta0=10": ({"temperature": 3.0}, 10.0),
    }


def test_train_takes_plugin_options(test_plugins, offline, capsys, tmp_path):
    code, _, err = run(capsys, "train", "--weighting", "cosee", "--beta0", "5", "--signal", "windowed",
                       "--windows", "1,2", "--floor", "none", "--temperature", "3", "--no-track", "--num-layers", "1",
                       "--max-train-samples", "8", "--max-eval-samples", "8", "--max-length", "16",
                       "--output-dir", "out")
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "adaptive_exit.json").read_text())
    assert saved["signal"]["options"] == {"windows": [1, 2], "floor": None, "temperature": 3.0}
    assert saved["weighting"]["options"]["beta0"] == 5.0
    assert Windowed.built[0] == WindowOptions(windows=[1, 2], floor=None, temperature=3.0)


def test_saved_model_commands_take_plugin_options(test_plugins, model_copy, offline, capsys, tmp_path):
    base = ("--signal", "windowed", "--windows", "2,3")
    code, _, err = run(capsys, "evaluate", model_copy, *base, "--floor", "0.1", "--no-track", "--max-eval-samples",
                       "16", "--json")
    assert code == 0, err
    code, _, err = run(capsys, "calibrate", model_copy, *base, "--floor", "0.2", "--target-speedup", "1",
                       "--no-track", "--max-eval-samples", "16")
    assert code == 0, err
    (tmp_path / "texts.txt").write_text("a gripping film\ndull\n")
    code, out, err = run(capsys, "predict", model_copy, *base, "--floor", "0.3", "--input", "texts.txt")
    assert code == 0, err
    assert len(out.splitlines()) == 2
    code, _, err = run(capsys, "benchmark", model_copy, *base, "--signal.floor", "0.4", "--batch-sizes", "4",
                       "--repeats", "1", "--max-eval-samples", "8", "--json")
    assert code == 0, err
    assert [(o.windows, o.floor) for o in Windowed.built] == [([2, 3], 0.1), ([2, 3], 0.2), ([2, 3], 0.3),
                                                              ([2, 3], 0.4)]


def test_saved_model_commands_name_the_flag(test_plugins, trained_model, capsys):
    code, _, err = run(capsys, "predict", str(trained_model), "--signal", "needy", "--threshold", "0.5")
    usage_error(code, err, "--window is required")
    code, _, err = run(capsys, "evaluate", str(trained_model), "--patience", "3")
    usage_error(code, err, "--patience is an option of signal 'patience-confidence', not of the chosen signal "
                           "'entropy'")
    code, _, err = run(capsys, "evaluate", str(trained_model), "--beta0", "3")
    usage_error(code, err, "--beta0 is an option of weighting 'cosee', not of the chosen signal 'entropy'")
    code, _, err = run(capsys, "calibrate", str(trained_model), "--target-speedup", "2", "--temperature", "-1")
    usage_error(code, err, "invalid value for --temperature: Input should be greater than 0")


def test_predict_takes_a_signal_option(cli, trained_model, tmp_path):
    """`predict DIR --temperature T` in real subprocesses: entropy at T = 0.01 is near 0 (everyone leaves at exit
    1 for threshold 0.5), at T = 100 near 1 (nobody leaves before the last exit)."""
    (tmp_path / "texts.txt").write_text("a gripping film\ndull\n")
    layers = {}
    for temperature in ("0.01", "100"):
        done = cli("predict", str(trained_model), "--threshold", "0.5", "--input", "texts.txt", "--temperature",
                   temperature)
        assert done.returncode == 0, done.stderr[-2000:]
        layers[temperature] = [json.loads(line)["exit_layer"] for line in done.stdout.splitlines()]
    assert layers == {"0.01": [1, 1], "100": [2, 2]}
