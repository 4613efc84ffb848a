"""Shared fixtures: a private data cache and MLflow store per test session, and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run in parallel workers (pytest -n, the default): one thread for each worker and every process it
    # starts, so the workers share the cores; torch's own threads on top of them would oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"

# transformers' log handler writes to the stderr it saw when it was made; made here, that is the session's. Made
# inside a test that captures stderr (capsys), it kept that test's stream, closed with it, and a later warning in
# another in-process test printed a logging traceback into that test's stderr.
from transformers.utils import logging as transformers_logging  # noqa: E402

transformers_logging.get_logger("transformers")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-layers", "2", "--max-length", "32", "--epochs", "1", "--batch-size", "16"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache shared by the session's tests (the real data is fetched into it once)."""
    return Path(os.environ.get("ADAPTIVE_EXIT_TEST_CACHE") or tmp_path_factory.mktemp("cache"))


@pytest.fixture
def env(cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: private cache, MLflow store in the test's directory, no hub."""
    return {**os.environ, "ADAPTIVE_EXIT_CACHE": str(cache_dir),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path):
    """Run ``adaptive-exit ARGS`` in a real subprocess in the test's directory."""

    def run(*args: str, extra_env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "adaptive_exit", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**env, **(extra_env or {})}, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def trained_model(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real model (MiniLM cut to 2 layers) trained briefly with COSEE on movie-reviews, saved.

    Its MLflow store is ``mlflow.db`` beside the model directory, and what ``train`` printed on stderr is
    ``train.stderr``."""
    workdir = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "ADAPTIVE_EXIT_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "adaptive_exit", "train", *TINY, "--weighting", "cosee",
                           "--signal", "entropy", "--max-train-samples", "64", "--max-eval-samples", "48",
                           "--output-dir", str(workdir / "model")], cwd=workdir, capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (workdir / "train.stderr").write_text(done.stderr)
    return workdir / "model"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def http_server(command: Callable[[int], list[str]], ready_path: str, workdir: Path,
                env: dict[str, str] | None = None, timeout: int = 180) -> Iterator[int]:
    """Start ``command(port)`` in ``workdir``, wait until ``ready_path`` answers on 127.0.0.1, yield the port, stop it."""
    port = free_port()
    log = workdir / "server.log"
    server = subprocess.Popen(command(port), cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
