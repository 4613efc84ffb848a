"""The built-in MLflow tracker: a plugin on the lifecycle hooks."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock; use a tracking server there for concurrent commands
    fcntl = None

import yaml

from .config import flatten
from .errors import UsageError
from .hookspecs import hookimpl
from .run_status import HOST, PID, end_run, fail_dead_runs, fail_pending_models, local_path
from .writes import writing

RUN_ID = "mlflow_run_id"
CODE = "code_hash"
SHARE_KEY = re.compile(r"^(?P<group>.+)/exit_(?P<exit>\d+)$")


def _client_and_run(run: Any) -> tuple[Any, str] | None:
    if not run.tracking or RUN_ID not in run.state:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(), run.state[RUN_ID]


def _log_metrics(client: Any, run_id: str, values: list[tuple[str, float, int]]) -> None:
    import time

    from mlflow.entities import Metric

    import mlflow

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for key, value, step in values if value is not None]
    with writing(f"the metrics of MLflow run {run_id}", local_path(mlflow.get_tracking_uri())):
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` beside a SQLite store while it is opened.

    The first command to open a new SQLite store creates its tables; two doing it at once would
    collide, as would two creating the same experiment. Other stores need no lock.
    """
    if not tracking_uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    database = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _param(value: Any) -> Any:
    """A parameter value MLflow accepts: lists as comma-separated text, cut to MLflow's 6000 characters."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return value[:6000] if isinstance(value, str) else value


def check_server_answers(tracking_uri: str, timeout: float = 5.0) -> None:
    """A UsageError if the store is a tracking server that does not answer its health check within ``timeout``
    seconds (MLflow would otherwise retry for minutes); local stores pass."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"the MLflow tracking server at {tracking_uri} does not answer ({reason}); start it, point "
                         f"MLFLOW_TRACKING_URI at another store, or pass --no-track") from None


def resume_run(run_id: str, owner: dict[str, str]) -> None:
    """Make ``run_id`` the active run again (RUNNING, owned by this process, without the tags that said why it
    stopped), or a UsageError if this store cannot give it back."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        active = mlflow.start_run(run_id=run_id, tags=owner, nested=mlflow.active_run() is not None)  # a sweep's child
    except MlflowException as exc:
        raise UsageError(f"cannot resume MLflow run {run_id} in the store {mlflow.get_tracking_uri()} "
                         f"({str(exc).splitlines()[0]}); point MLFLOW_TRACKING_URI at the store the run started "
                         f"in") from None
    for stale in ("adaptive_exit.failure", "adaptive_exit.error"):
        if stale in active.data.tags:
            mlflow.MlflowClient().delete_tag(run_id, stale)
    mlflow.set_tag("adaptive_exit.resumed", " ".join(sys.argv))


@hookimpl
def on_run_start(run: Any) -> None:
    if not run.tracking:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    parent = run.parent.state.get(RUN_ID) if run.parent is not None and run.parent.tracking else None
    check_server_answers(mlflow.get_tracking_uri())
    if run.command == "train" and run.config["tracking"]["log_model"]:
        from .mlflow_model import code_hash

        run.state[CODE] = code_hash()  # the code this process runs, which the logged model must carry
    with store_lock(mlflow.get_tracking_uri()):
        fail_dead_runs(MlflowClient(), mlflow.get_tracking_uri())
        mlflow.set_experiment(run.experiment)
    owner = {PID: str(os.getpid()), HOST: socket.gethostname()}  # with the run from its first moment
    if run.resumed and RUN_ID in run.state:
        resume_run(run.state[RUN_ID], owner)
        return
    active = mlflow.start_run(run_name=run.run_name, nested=parent is not None, parent_run_id=parent, tags=owner)
    run.state[RUN_ID] = active.info.run_id
    params = {key: value for key, value in flatten(run.config).items()}
    tags = {"adaptive_exit.command": run.command, "adaptive_exit.argv": " ".join(run.argv)}
    for kind, chosen in run.plugins.items():
        params[f"plugin.{kind}"] = tags[f"adaptive_exit.plugin.{kind}"] = (
            f"{chosen['name']} ({chosen['plugin']} {chosen['version']})")
    mlflow.log_params({key: ("" if value is None else _param(value)) for key, value in params.items()})
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    mlflow.set_tags(tags)


@hookimpl
def on_data_loaded(run: Any, task: Any, splits: tuple[str, ...]) -> None:
    if not _client_and_run(run):
        return
    import mlflow

    dataset = run.config.get("data", {}).get("dataset", "data")
    for split in splits:
        frame = task.splits[split].to_pandas()
        source = mlflow.data.from_pandas(frame, name=f"{dataset}:{split}", targets="label")
        mlflow.log_input(source, context="training" if split == "train" else split)


@hookimpl
def on_step_end(run: Any, step: int, logs: dict[str, float]) -> None:
    found = _client_and_run(run)
    if found:
        _log_metrics(*found, [(key, value, step) for key, value in logs.items() if key != "epoch"])


def logged_shares(client: Any, run_id: str) -> dict[str, dict[int, dict[int, float]]]:
    """The run's ``name/exit_k`` step metrics: name -> step -> exit -> value (the last value logged at a step)."""
    shares: dict[str, dict[int, dict[int, float]]] = {}
    for key in client.get_run(run_id).data.metrics:
        match = SHARE_KEY.match(key)
        if match:
            for metric in client.get_metric_history(run_id, key):
                shares.setdefault(match["group"], {}).setdefault(metric.step, {})[int(match["exit"])] = metric.value
    return shares


def plot_shares(name: str, shares: dict[int, dict[int, float]], path: Path) -> Path:
    """Each exit's share over the training steps, as stacked areas (``name/exit_k`` step metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(shares)
    exits = sorted({k for values in shares.values() for k in values})
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.stackplot(steps, [[shares[s].get(k, 0.0) for s in steps] for k in exits],
                   labels=[f"exit {k}" for k in exits])
    axis.set_xlabel("training step")
    axis.set_ylabel("share")
    axis.set_ylim(0, 1)
    axis.set_title(f"{name}: each exit's share")
    axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _sweep_files(results: Any, directory: Path) -> list[Path]:
    data = results.to_dict()
    json_path = directory / "sweep.json"
    json_path.write_text(json.dumps(data, indent=2))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    num_exits = len(results.per_exit_metric)
    writer.writerow(["threshold", "speedup", results.metric_name, *[f"exit_{i + 1}" for i in range(num_exits)]])
    for point in results.curve:
        writer.writerow([point.threshold, point.speedup, point.metric, *point.exit_counts])
    csv_path = directory / "sweep.csv"
    csv_path.write_text(buffer.getvalue())
    return [json_path, csv_path, plot_curve(results, directory / "curve.png")]


def plot_curve(results: Any, path: Path) -> Path:
    """The metric / layer speed-up curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(results.curve, key=lambda p: p.speedup)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p.speedup for p in points], [p.metric for p in points], marker=".", label=results.signal)
    axis.set_xlabel("layer speed-up (L·N / Σ exit layer)")
    axis.set_ylabel(results.metric_name)
    axis.set_title(f"{results.metric_name} vs layer speed-up (AUC {results.auc:.4f})")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _log_written(client: Any, run_id: str, write: Callable[[Path], list[Path]],
                 artifact_path: str | None = None) -> None:
    """Log as artifacts the files that ``write`` puts into a temporary directory."""
    artifacts = client.get_run(run_id).info.artifact_uri
    with tempfile.TemporaryDirectory() as tmp, writing(f"the artifacts of MLflow run {run_id}", local_path(artifacts)):
        for path in write(Path(tmp)):
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def _write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@hookimpl
def on_evaluate_end(run: Any, results: Any) -> None:
    found = _client_and_run(run)
    if not found:
        return
    client, run_id = found
    name = results.metric_name
    if results.epoch is not None:
        values = [(f"exit_{i + 1}_{name}", m, results.epoch) for i, m in enumerate(results.per_exit_metric)]
        _log_metrics(client, run_id, values + [("auc", results.auc, results.epoch)])
        return
    values = []
    for index, point in enumerate(sorted(results.curve, key=lambda p: p.speedup)):
        values += [("curve_threshold", point.threshold, index), ("curve_speedup", point.speedup, index),
                   (f"curve_{name}", point.metric, index)]
    if run.command != "train":  # training logged these per epoch already
        values += [(f"exit_{i + 1}_{name}", m, 0) for i, m in enumerate(results.per_exit_metric)]
    values += [("auc", results.auc, 0)] + [(f"{name}_at_{k}x", v, 0) for k, v in results.metric_at.items()]
    values += [(key, value, 0) for key, value in results.extra.items() if isinstance(value, (int, float))]
    _log_metrics(client, run_id, values)
    _log_written(client, run_id, lambda directory: _sweep_files(results, directory))


@hookimpl
def on_sweep_end(run: Any, comparison: Any) -> None:
    found = _client_and_run(run)
    if not found:
        return
    client, run_id = found
    _log_written(client, run_id, comparison.write, artifact_path=comparison.name or None)


@hookimpl
def on_run_end(run: Any, status: str, output_dir: str | None, error: str | None) -> None:
    found = _client_and_run(run)
    if not found:
        return
    import mlflow

    from .lifecycle import error_line

    client, run_id = found
    try:
        shares = logged_shares(client, run_id)
        _log_written(client, run_id, lambda directory: [_write_config(run.config, directory / "config.yaml")] + [
            plot_shares(name, by_step, directory / f"{name}.png") for name, by_step in shares.items()])
        if output_dir:
            with writing(f"the tags of MLflow run {run_id}", local_path(mlflow.get_tracking_uri())):
                client.set_tag(run_id, "adaptive_exit.output_dir", str(Path(output_dir).resolve()))
        if status == "FINISHED" and run.command == "train" and output_dir and run.config["tracking"]["log_model"]:
            from .mlflow_model import log_model

            artifacts = client.get_run(run_id).info.artifact_uri
            with writing(f"the MLflow model of run {run_id} into {artifacts}", local_path(artifacts),
                         cleanup=lambda: fail_pending_models(client, client.get_run(run_id)),
                         then=f"use the model in {output_dir}, which is complete"):
                log_model(output_dir, expected_code=run.state.get(CODE))
    except BaseException as exc:  # the run did not get all it promised: it did not finish
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        error = error or (None if status == "KILLED" else error_line(exc))
        raise
    finally:
        end_run(client, run_id, status, error, mlflow.get_tracking_uri())
