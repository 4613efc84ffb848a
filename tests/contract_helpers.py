"""Helpers for the plugin-contract tests: small plugin packages (a module and its ``.dist-info`` with the entry
point, in a directory on ``sys.path`` in-process or ``PYTHONPATH`` for subprocesses), classes registered in the
test, and in-process commands checked for a one-line error."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from adaptive_exit import hookimpl, plugins
from adaptive_exit.cli import main


def write_plugin(site: Path, distribution: str, entry: str, source: str, version: str = "0.1.0") -> str:
    """Write module ``source`` as an installed distribution whose entry point ``entry`` names it; returns the module."""
    module = distribution.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[adaptive_exit]\n{entry} = {module}\n")
    return module


class Site:
    """A directory of plugin packages: ``add`` writes one; ``pythonpath`` is ``extra_env`` for the ``cli`` fixture."""

    def __init__(self, path: Path):
        self.path = path
        self.modules: list[str] = []

    def add(self, distribution: str, entry: str, source: str, version: str = "0.1.0") -> None:
        self.modules.append(write_plugin(self.path, distribution, entry, source, version))
        plugins.reset()

    @property
    def pythonpath(self) -> dict[str, str]:
        existing = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([str(self.path), *([existing] if existing else [])])}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Plugin packages visible to this process (``sys.path``) and, through ``site.pythonpath``, to subprocesses."""
    path = tmp_path / "site"
    path.mkdir()
    found = Site(path)
    sys.path.insert(0, str(path))
    try:
        yield found
    finally:
        sys.path.remove(str(path))
        for module in found.modules:
            sys.modules.pop(module, None)
        plugins.reset()


def plugin_registering(signals: tuple[type, ...] = (), weightings: tuple[type, ...] = ()) -> object:
    """A plugin object whose hooks register the given classes."""

    class Plugin:
        @hookimpl
        def register_signals(self, register):
            for cls in signals:
                register(cls)

        @hookimpl
        def register_weightings(self, register):
            for cls in weightings:
                register(cls)

    return Plugin()


@pytest.fixture
def register() -> Iterator:
    """``register(signals=..., weightings=...)`` adds a plugin named 'contract-test' that registers those classes to
    this process's plugins; ``register(plugin=obj)`` adds ``obj`` under that name."""
    pm = plugins.get_plugin_manager()

    def add(plugin: object | None = None, **classes: tuple[type, ...]) -> None:
        pm.register(plugin or plugin_registering(**classes), name="contract-test")
        plugins.refresh()

    yield add
    if pm.get_plugin("contract-test") is not None:
        pm.unregister(name="contract-test")
    plugins.refresh()


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``adaptive-exit ARGV`` in this process: exit code, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(code: int, stderr: str, *fragments: str) -> str:
    """The one error line, after checking exit code 2, that there is no traceback and that it holds ``fragments``."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    errors = [line for line in stderr.splitlines() if line.startswith("adaptive-exit: error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def offline(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process commands with the test session's data cache, no hub, in the test's directory."""
    for key in ("ADAPTIVE_EXIT_CACHE", "HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
