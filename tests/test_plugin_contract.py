"""The plugin contract: a broken plugin is named in one line with exit code 2, never a traceback, and
`adaptive-exit plugins` still lists the good ones; signal and weighting outputs are checked at the boundary."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_exit import ExitOutputs, Signal, Weighting, hookimpl, sweep
from adaptive_exit.errors import PluginError
from adaptive_exit.signals import MaxProb
from adaptive_exit.testing import check_signal
from adaptive_exit_baselines.signals import Patience

from contract_helpers import offline, register, run, site, usage_error  # noqa: F401 (fixtures)

GOOD = '''
from adaptive_exit import Signal, hookimpl

class Good(Signal):
    """A signal that is fine."""
    name = "good-signal"
    exit_when = ">"
    def score(self, outputs):
        return outputs.logits.float().softmax(-1).amax(-1)

@hookimpl
def register_signals(register):
    register(Good)
'''


# --- registration checks -----------------------------------------------------------------------------------------

BROKEN = {
    "not-a-signal": ('''
from adaptive_exit import hookimpl

class NotASignal:
    name = "not-a-signal"

@hookimpl
def register_signals(register):
    register(NotASignal)
''', "not a subclass of adaptive_exit.Signal"),
    "bad-rule": ('''
from adaptive_exit import Signal, hookimpl

class Equal(Signal):
    name = "equal"
    exit_when = "=="

@hookimpl
def register_signals(register):
    register(Equal)
''', "exit_when = '=='; use one of '<', '<=', '>', '>='"),
    "no-rule": ('''
from adaptive_exit import Signal, hookimpl

class Above(Signal):
    """Exit when the top probability is above the threshold (but exit_when is forgotten)."""
    name = "above"
    def score(self, outputs):
        return outputs.logits.float().softmax(-1).amax(-1)

@hookimpl
def register_signals(register):
    register(Above)
''', "registered signal 'above' without exit_when; set it to '<' or '<='"),
    "misspelled": ('''
from adaptive_exit import hookimpl

@hookimpl
def register_signals(regster):
    pass
''', "implements register_signals(regster), but the hook passes register_signals(register): rename 'regster'"),
    "clashing": ('''
from pydantic import BaseModel
from adaptive_exit import Signal, hookimpl

class Options(BaseModel):
    epochs: int = 3

class Clash(Signal):
    name = "clash"
    Options = Options

@hookimpl
def register_signals(register):
    register(Clash)
''', "option 'epochs' clashes with the built-in flag --epochs; rename the option"),
    "no-options-model": ('''
from adaptive_exit import Signal, hookimpl

class Loose(Signal):
    name = "loose"
    Options = dict

@hookimpl
def register_signals(register):
    register(Loose)
''', "Options is <class 'dict'>, not a pydantic model"),
    "nameless": ('''
from adaptive_exit import Weighting, hookimpl

class Nameless(Weighting):
    pass

@hookimpl
def register_weightings(register):
    register(Nameless)
''', "without a name"),
    "import-error": ('''
import adaptive_exit_no_such_module
''', "failed to import (adaptive_exit_import_error): ModuleNotFoundError"),
    "unknown-hook": ('''
from adaptive_exit import hookimpl

@hookimpl
def register_signal(register):
    pass
''', "implements the unknown hook register_signal(register); the hooks are register_signals"),
}


@pytest.mark.parametrize("entry", BROKEN)
def test_broken_plugin_is_named_in_one_line(entry, site, capsys):
    source, problem = BROKEN[entry]
    site.add("adaptive-exit-good", "good", GOOD)
    site.add(f"adaptive-exit-{entry}", entry, source, version="0.3.1")
    code, _, err = run(capsys, "evaluate", "no-such-model")
    usage_error(code, err, f"plugin '{entry}' (adaptive-exit-{entry} 0.3.1)", problem,
                f"uninstall adaptive-exit-{entry}")

    code, out, err = run(capsys, "plugins", "--json")
    assert code == 0 and err == ""
    listing = json.loads(out)
    assert "good-signal" in [s["name"] for s in listing["signals"]]
    assert "entropy" in [s["name"] for s in listing["signals"]]
    (broken,) = listing["broken"]
    assert (broken["plugin"], broken["distribution"], broken["version"]) == (entry, f"adaptive-exit-{entry}", "0.3.1")
    assert problem in broken["problem"]


def test_same_name_from_two_plugins(site, capsys):
    site.add("adaptive-exit-good", "good", GOOD)
    site.add("adaptive-exit-copy", "copy", GOOD.replace("class Good", "class Copy").replace("register(Good)",
                                                                                          "register(Copy)"))
    code, _, err = run(capsys, "train", "--help")
    line = usage_error(code, err, "registers the signal 'good-signal', which '")
    assert "'good'" in line and "'copy'" in line  # which of the two loads first depends on the file system
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    listed = [line for line in out.splitlines() if line.startswith("  good-signal ")]
    assert len(listed) == 1 and listed[0].endswith("A signal that is fine.")
    assert "broken:\n" in out and "registers the signal 'good-signal', which '" in out.split("broken:\n")[1]


def test_broken_plugin_through_real_commands(site, cli):
    """The same in real subprocesses: `train --help` stops with the message, `plugins` lists the good and the broken."""
    site.add("adaptive-exit-good", "good", GOOD)
    site.add("adaptive-exit-not-a-signal", "not-a-signal", BROKEN["not-a-signal"][0])
    done = cli("train", "--help", extra_env=site.pythonpath)
    usage_error(done.returncode, done.stderr, "plugin 'not-a-signal' (adaptive-exit-not-a-signal 0.1.0)",
                "not a subclass of adaptive_exit.Signal")
    done = cli("plugins", extra_env=site.pythonpath)
    assert done.returncode == 0, done.stderr
    assert "good-signal" in done.stdout and "broken:\n  not-a-signal" in done.stdout


class RaisingPlugin:
    @hookimpl
    def register_signals(self, register):
        raise RuntimeError("no licence file")


def test_register_hook_that_raises(register, capsys):
    register(plugin=RaisingPlugin())
    code, _, err = run(capsys, "evaluate", "no-such-model")
    usage_error(code, err, "plugin 'contract-test' (registered in this process) raised in register_signals: "
                           "RuntimeError: no licence file")


# --- output checks ------------------------------------------------------------------------------------------------

class NanEverywhere(MaxProb):
    """NaN for every sample."""

    name = "nan-test"

    def score(self, outputs):
        return torch.full(outputs.logits.shape[:2], float("nan"))


class Transposed(MaxProb):
    """[batch, exits] instead of [exits, batch]."""

    name = "transposed-test"

    def score(self, outputs):
        return super().score(outputs).T.contiguous()


class PerClass(Signal):
    """[exits, batch, classes]: the probabilities, not a score."""

    name = "per-class-test"
    exit_when = ">"

    def score(self, outputs):
        return outputs.logits.softmax(-1)


class FailsToStart(MaxProb):
    """Raises in __init__."""

    name = "fails-to-start"

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        raise ValueError("needs a GPU")


class ForgetfulPatience(Patience):
    """PABEE's patience, but claims to read the current exit alone."""

    name = "forgetful-patience"
    uses_history = False


class PeekAhead(MaxProb):
    """Scores exit i by exit i + 1's confidence: looks at an exit that early exit has not run yet."""

    name = "peek-ahead"
    uses_history = True

    def score(self, outputs):
        scores = super().score(outputs)
        return torch.cat([scores[1:], scores[-1:]])


class BareTensor(Weighting):
    """Returns the loss tensor itself."""

    name = "bare-tensor"

    def loss(self, outputs, labels, step):
        return torch.nn.functional.cross_entropy(outputs.logits[-1], labels)


class Diverging(Weighting):
    """Returns an infinite loss."""

    name = "diverging"

    def loss(self, outputs, labels, step):
        from adaptive_exit import WeightingLoss

        return WeightingLoss(outputs.logits.sum() * 0.0 + float("inf"))


def outputs(exits: int, batch: int) -> ExitOutputs:
    torch.manual_seed(0)
    return ExitOutputs(torch.randn(exits, batch, 2), torch.zeros(exits, batch, 4))


def test_transposed_scores_are_caught_even_when_exits_equal_samples(register):
    register(signals=(Transposed,))
    signal = Transposed(num_exits=3, hidden_size=4, num_labels=2)
    with pytest.raises(PluginError) as caught:
        sweep(outputs(3, 3), torch.tensor([0, 1, 1]), signal)
    # 3 exits and 3 samples: [3, 3] is the right shape, so the first sample alone is scored too: [1, 3], not [3, 1]
    assert str(caught.value).startswith("signal 'transposed-test' of plugin 'contract-test' (registered in this "
                                        "process): score returned shape [1, 3] for 3 exit(s) and 1 sample(s)")


def test_scores_of_the_wrong_shape_in_evaluate(register, trained_model, offline, capsys):
    register(signals=(Transposed, PerClass))
    code, _, err = run(capsys, "evaluate", str(trained_model), "--signal", "transposed-test", "--no-track",
                       "--max-eval-samples", "16")
    usage_error(code, err, "signal 'transposed-test' of plugin 'contract-test'",
                "score returned shape [16, 2] for 2 exit(s) and 16 sample(s)", "[exits, batch]")


def test_per_class_scores_in_predict(register, trained_model, offline, capsys, tmp_path):
    register(signals=(PerClass,))
    (tmp_path / "texts.txt").write_text("a gripping film\ndull\n")
    code, out, err = run(capsys, "predict", str(trained_model), "--signal", "per-class-test", "--threshold", "0.5",
                         "--input", "texts.txt")
    usage_error(code, err, "signal 'per-class-test' of plugin 'contract-test'", "score returned shape [1, 2, 2] for 1 "
                "exit(s) and 2 sample(s)")
    assert out == ""


def test_nan_for_every_sample_is_reported(register, trained_model, offline, capsys):
    register(signals=(NanEverywhere,))
    code, out, err = run(capsys, "evaluate", str(trained_model), "--signal", "nan-test", "--no-track",
                         "--max-eval-samples", "16", "--json")
    assert code == 0, err
    assert ("adaptive-exit: warning: signal 'nan-test' of plugin 'contract-test' (registered in this process) scored "
            "NaN for every sample at every exit but the last: no sample leaves early") in err
    assert all(point["exit_counts"] == [0, 16] for point in json.loads(out)["curve"])


def test_exception_in_init_and_debug_traceback(register, trained_model, offline, capsys, monkeypatch):
    register(signals=(FailsToStart,))
    argv = ("evaluate", str(trained_model), "--signal", "fails-to-start", "--no-track", "--max-eval-samples", "8")
    code, _, err = run(capsys, *argv)
    usage_error(code, err, "signal 'fails-to-start' of plugin 'contract-test' (registered in this process) raised in "
                           "__init__: ValueError: needs a GPU")
    code, _, err = run(capsys, *argv, "--debug")
    assert code == 2 and "Traceback" in err and 'raise ValueError("needs a GPU")' in err
    monkeypatch.setenv("ADAPTIVE_EXIT_DEBUG", "1")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "Traceback" in err


@pytest.mark.parametrize("weighting, problem", [
    ("bare-tensor", "loss returned Tensor, not an adaptive_exit.WeightingLoss(total, logs)"),
    ("diverging", "loss returned a total of inf at step 0, not a finite number"),
])
def test_weighting_loss_is_checked(weighting, problem, register, offline, capsys):
    register(weightings=(BareTensor, Diverging))
    code, _, err = run(capsys, "train", "--weighting", weighting, "--no-track", "--num-layers", "1",
                       "--max-train-samples", "8", "--max-eval-samples", "8", "--max-length", "16",
                       "--output-dir", "out")
    usage_error(code, err, f"weighting '{weighting}' of plugin 'contract-test'", problem)
    assert "epoch 1/1" not in err  # found by the probe batch, before the first training step


def test_evaluate_check_signal_catches_a_peeking_signal(register, trained_model, offline, capsys):
    # with 2 exits only exit 1's score is consulted, where every history is the same: a wrong uses_history cannot
    # show here (check_signal's 4-exit model catches it), a score that reads exit 2 does
    register(signals=(PeekAhead,))
    code, _, err = run(capsys, "evaluate", str(trained_model), "--signal", "patience", "--no-track",
                       "--max-eval-samples", "32", "--check-signal")
    assert code == 0, err
    assert "early-exit check passed: real early exit agrees with the sweep for all 32 samples" in err
    code, _, err = run(capsys, "evaluate", str(trained_model), "--signal", "peek-ahead", "--no-track",
                       "--max-eval-samples", "32", "--check-signal", "--precision", "fp32")
    usage_error(code, err, "signal 'peek-ahead' of plugin 'contract-test'", "fails the early-exit check",
                "leave at another layer in real early exit than in the simulation")
    assert "--precision fp32" not in err
    code, _, err = run(capsys, "evaluate", str(trained_model), "--signal", "peek-ahead", "--no-track",
                       "--max-eval-samples", "32", "--check-signal", "--precision", "bf16")
    usage_error(code, err, "fails the early-exit check", "in bf16 a score close to the threshold can also be "
                "rounded across it: rerun with --precision fp32")


# --- adaptive_exit.testing.check_signal ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["entropy", "maxprob", "energy", "patience", "patience-confidence", "lte", "static"])
def test_check_signal_passes_for_built_in_and_baseline_signals(name):
    from adaptive_exit.plugins import registry

    check_signal(registry("signals")[name].cls)


def test_check_signal_fails_for_a_peeking_signal():
    with pytest.raises(AssertionError, match="signal 'peek-ahead' .* fails the early-exit check: [0-9]+ sample"):
        check_signal(PeekAhead)


def test_check_signal_fails_for_a_wrong_uses_history():
    with pytest.raises(AssertionError, match="uses_history = False"):
        check_signal(ForgetfulPatience)


def test_check_signal_runs_the_registration_checks():
    class Equal(MaxProb):
        name = "equal"
        exit_when = "=="

    with pytest.raises(AssertionError, match="exit_when = '=='"):
        check_signal(Equal)


@pytest.mark.parametrize("command", ["train", "sweep", "evaluate", "calibrate", "predict", "benchmark"])
def test_the_commands_own_flags_are_reserved(command):
    """The registration check knows every flag of the commands that take plugin options (config.COMMAND_FLAGS)."""
    from adaptive_exit.cli import make_parser
    from adaptive_exit.config import reserved_flag

    subparsers = make_parser([command])._subparsers._group_actions[0]
    own = {action.dest.rsplit(".", 1)[-1] for action in subparsers.choices[command]._actions
           if not action.dest.startswith("option:")}
    assert {dest for dest in own if reserved_flag(dest, None) is None} == set()
