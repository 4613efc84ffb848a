"""Every hook is documented, and every lifecycle hook fires in a real training run."""

import inspect
from pathlib import Path

import pytest

from adaptive_exit import hookspecs, plugins
from adaptive_exit.cli import main
from adaptive_exit.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "adaptive_exit_spec")]


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_docstring_and_is_documented(name):
    function = getattr(hookspecs, name)
    assert (function.__doc__ or "").strip()
    signature = f"{name}({', '.join(inspect.signature(function).parameters)})"
    assert signature in (ROOT / "CONTRIBUTING.md").read_text(), signature


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def on_run_start(self, run):
        self.calls.append(("start", run.command))

    @hookimpl
    def on_step_end(self, run, step, logs):
        self.calls.append(("step", step, sorted(logs)))

    @hookimpl
    def on_evaluate_end(self, run, results):
        self.calls.append(("evaluate", results.epoch))

    @hookimpl
    def on_run_end(self, run, status, output_dir):
        self.calls.append(("end", status, output_dir))


def test_lifecycle_hooks_fire_in_order(env, tmp_path, monkeypatch):
    for key in ("ADAPTIVE_EXIT_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    plugins.get_plugin_manager().register(recorder, name="recorder")
    try:
        assert main(["train", "--no-track", "--num-layers", "1", "--max-train-samples", "8", "--batch-size", "4",
                     "--max-eval-samples", "8", "--max-length", "16", "--output-dir", "out"]) == 0
    finally:
        plugins.get_plugin_manager().unregister(name="recorder")
    assert recorder.calls[0] == ("start", "train")
    assert [c[:2] for c in recorder.calls[1:3]] == [("step", 1), ("step", 2)]
    assert {"loss", "lr", "epoch"} <= set(recorder.calls[1][2])
    assert recorder.calls[3:] == [("evaluate", 1), ("evaluate", None), ("end", "FINISHED", "out")]
