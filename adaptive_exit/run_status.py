"""A run's final status in MLflow tells the truth even when its process died, the disk filled or the store itself
could not be written: dead processes' runs are failed by the next command, a logged model left PENDING by a failed
log is marked FAILED and its files removed, and an end the store could not take is recorded and applied later."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .cache import cache_dir
from .writes import DiskFullError, full_disk_message, is_disk_full

PID, HOST = "adaptive_exit.pid", "adaptive_exit.host"
FAILURE, ERROR = "adaptive_exit.failure", "adaptive_exit.error"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_path(uri: str) -> Path | None:
    """The file behind a local store or artifact URI (``sqlite:///...``, ``file://...``, a plain path); None for a
    server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def pending_dir() -> Path:
    """Where ends that a store could not take wait for the next command."""
    return cache_dir() / "pending-run-ends"


def fail_dead_runs(client: Any, tracking_uri: str) -> list[str]:
    """Mark FAILED every RUNNING run started on this host by a process that no longer exists, with the reason its
    process recorded if the store could not take it then (a full disk), else that the process ended without closing
    the run (killed with SIGKILL, or its machine rebooted); returns their ids. Runs of other hosts are left alone."""
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    found = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'",
                               max_results=1000)
    dead = [r for r in found if r.data.tags.get(PID, "").isdigit() and not process_alive(int(r.data.tags[PID]))]
    for stale in dead:
        run_id = stale.info.run_id
        record = pending_dir() / f"{run_id}.json"
        try:
            pending = json.loads(record.read_text())
        except (OSError, ValueError):
            pending = None
        if pending is not None and pending.get("tracking_uri") == tracking_uri:
            client.set_tag(run_id, FAILURE, pending["reason"][:5000])
            fail_pending_models(client, stale)
            client.set_terminated(run_id, status=pending["status"])
            record.unlink(missing_ok=True)
            continue
        client.set_tag(run_id, FAILURE, f"process {stale.data.tags[PID]} on {host} ended without closing the run")
        client.set_terminated(run_id, status="FAILED")
    return [r.info.run_id for r in dead]


def fail_pending_models(client: Any, run: Any) -> None:
    """Mark FAILED the logged models of ``run`` still PENDING (a log that failed half-way), and remove their local
    files, so that nothing loads a half-written model."""
    from mlflow.entities import LoggedModelStatus

    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    for model in models:
        if model.status != LoggedModelStatus.PENDING:
            continue
        files = local_path(model.artifact_location)
        if files is not None:  # first, so that a full disk has room again for the store's write
            shutil.rmtree(files, ignore_errors=True)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)


def end_run(client: Any, run_id: str, status: str, error: str | None, tracking_uri: str) -> None:
    """Give the run its final ``status`` (and ``error``, the reason it FAILED); where the store cannot be written
    because its disk is full, record the end for the next command and raise a DiskFullError that says so."""
    import mlflow

    try:
        if error:
            client.set_tag(run_id, ERROR, error[:5000])
        if status != "FINISHED":
            fail_pending_models(client, client.get_run(run_id))
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)  # leaves the active-run stack even if the write fails
        else:
            client.set_terminated(run_id, status=status)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        reason = error or f"the run ended {status}"
        record = pending_dir() / f"{run_id}.json"
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"tracking_uri": tracking_uri, "status": status, "reason": reason}))
            later = f"the next command on this store marks run {run_id} {status} with it (recorded in {record})"
        except OSError:
            later = f"run {run_id} stays RUNNING in MLflow until a command on this store finds its process gone"
        where = local_path(tracking_uri)
        raise DiskFullError(f"{reason}; and " + full_disk_message(f"the MLflow store {tracking_uri}", where,
                                                                  then=later)) from exc
