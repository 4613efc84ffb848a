"""Sweeps: a grid of training runs under one parent run, and the comparison table and plot they produce."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import RunConfig
from .errors import UsageError
from .evaluation import SPEEDUP_MARKS, EvaluationResult, unique_curve
from .lifecycle import RunInfo, error_line, lifecycle
from .plugins import call_lifecycle


def expand_grid(values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, in the order given (the last key varies fastest)."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


@dataclass
class ChildResult:
    """One child run of a comparison: its configuration's name, seed, final sweep and output directory, or
    (``result`` None) the error that stopped it."""

    name: str
    group: str
    seed: int | None
    result: EvaluationResult | None
    output_dir: str | None = None
    error: str | None = None


class PartialSweep(Exception):
    """Some children of a sweep failed; ``comparison`` holds every child, the failed ones with their error."""

    def __init__(self, message: str, comparison: "Comparison"):
        super().__init__(message)
        self.comparison = comparison


def _mean_and_spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value); ``None`` if any value is missing."""
    if not values or any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, spread


def mean_curve(results: list[EvaluationResult], points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Speed-ups over the range every result covers, with the mean, minimum and maximum metric there."""
    curves = [unique_curve(np.array([p.speedup for p in r.curve]), np.array([p.metric for p in r.curve]))
              for r in results]
    low, high = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
    grid = np.linspace(low, high, points) if high > low else np.array([low])
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, values.mean(0), values.min(0), values.max(0)


@dataclass
class Comparison:
    """Child runs grouped by configuration (children differing only in seed share a group).

    ``name``, if set, is the folder its files go to among a parent run's artifacts (``test``, say).
    """

    metric_name: str
    children: list[ChildResult] = field(default_factory=list)
    title: str = "comparison"
    name: str = ""

    def groups(self, finished: bool = False) -> dict[str, list[ChildResult]]:
        """Children by group, in the order the groups first appear; with ``finished``, only those with a result."""
        grouped: dict[str, list[ChildResult]] = {}
        for child in self.children:
            if child.result is not None or not finished:
                grouped.setdefault(child.group, []).append(child)
        return grouped

    def failed(self) -> list[ChildResult]:
        """The children that stopped with an error."""
        return [c for c in self.children if c.result is None]

    def rows(self) -> list[dict[str, Any]]:
        """One row per group: seeds, and the mean and spread (sample std) of AUC and of the metric at each mark
        over the children that finished; a group's failures as ``failed`` (the first error in ``error``)."""
        name = self.metric_name
        rows = []
        finished = self.groups(finished=True)
        for group, every in self.groups().items():
            children = finished.get(group, [])
            errors = [c.error for c in every if c.result is None]
            row: dict[str, Any] = {"configuration": group, "runs": len(children),
                                   "seeds": " ".join(str(c.seed) for c in children)}
            failures = {"failed": len(errors), "error": errors[0] if errors else ""}
            if not children:
                rows.append({**row, **failures})
                continue
            row["auc_mean"], row["auc_std"] = _mean_and_spread([c.result.auc for c in children])
            for mark in SPEEDUP_MARKS:
                key = f"{mark:g}"
                row[f"{name}_at_{key}x_mean"], row[f"{name}_at_{key}x_std"] = _mean_and_spread(
                    [c.result.metric_at.get(key) for c in children])
            exits = len(children[0].result.per_exit_metric)
            for i in range(exits):
                row[f"exit_{i + 1}_{name}_mean"] = _mean_and_spread([c.result.per_exit_metric[i] for c in children])[0]
            rows.append({**row, **failures})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``comparison.json``."""
        return {
            "title": self.title,
            "metric_name": self.metric_name,
            "groups": self.rows(),
            "children": [{"name": c.name, "configuration": c.group, "seed": c.seed, "output_dir": c.output_dir,
                          **(c.result.to_dict() if c.result is not None else {"error": c.error})}
                         for c in self.children],
        }

    @classmethod
    def read(cls, path: str | Path, name: str = "") -> "Comparison":
        """A comparison back from the ``comparison.json`` that ``write`` made."""
        data = json.loads(Path(path).read_text())
        children = [ChildResult(c["name"], c["configuration"], c["seed"],
                                None if "error" in c else EvaluationResult.from_dict(c), c["output_dir"], c.get("error"))
                    for c in data["children"]]
        return cls(data["metric_name"], children, data["title"], name)

    def write(self, directory: str | Path) -> list[Path]:
        """``comparison.csv`` (one row per configuration), ``comparison.json`` and ``comparison.png``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        buffer = io.StringIO()
        fields = list(dict.fromkeys(key for row in rows for key in row)) or ["configuration"]
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        csv_path = directory / "comparison.csv"
        csv_path.write_text(buffer.getvalue())
        json_path = directory / "comparison.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return [csv_path, json_path, self.plot(directory / "comparison.png")]

    def plot(self, path: Path) -> Path:
        """Every configuration's metric / layer speed-up curve in one figure: the mean over its seeds,
        with the band between the lowest and highest seed where there are several."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(8, 5))
        self.draw(axis)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

    def draw(self, axis: Any) -> None:
        """The curves of ``plot`` drawn into a matplotlib ``axis`` (to put several comparisons in one figure)."""
        import matplotlib.pyplot as plt

        groups = self.groups(finished=True)
        colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
        for index, (group, children) in enumerate(groups.items()):
            grid, mean, low, high = mean_curve([c.result for c in children])
            label = group if len(children) == 1 else f"{group} (mean of {len(children)} seeds)"
            (line,) = axis.plot(grid, mean, label=label, color=colors[index % len(colors)],
                                linestyle="-" if index < len(colors) else "--")
            if len(children) > 1:
                axis.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
        axis.set_xlabel("layer speed-up (L·N / Σ exit layer)")
        axis.set_ylabel(self.metric_name)
        axis.set_title(self.title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)

    def table(self) -> str:
        """A readable summary, one line per configuration."""
        name = self.metric_name
        marks = [f"{m:g}" for m in SPEEDUP_MARKS]

        def cell(mean: float | None, spread: float | None) -> str:
            return "n/a" if mean is None else f"{mean:.4f}±{spread:.4f}"

        width = max([len("configuration"), *(len(r["configuration"]) for r in self.rows())])
        header = f"{'configuration':<{width}} runs  {'AUC':>15}" + "".join(f" {name + '@' + m + 'x':>15}" for m in marks)
        lines = [header]
        for row in self.rows():
            if row["runs"]:
                cells = [cell(row["auc_mean"], row["auc_std"])]
                cells += [cell(row[f"{name}_at_{m}x_mean"], row[f"{name}_at_{m}x_std"]) for m in marks]
                lines.append(f"{row['configuration']:<{width}} {row['runs']:>4}  " + " ".join(f"{c:>15}" for c in cells))
            if row["failed"]:
                lines.append(f"{row['configuration']:<{width}} {row['failed']:>4}  failed: {row['error']}")
        return "\n".join(lines)


@dataclass
class SweepChild:
    """One configuration of a sweep: its run name, the group it shares with other seeds, and its config."""

    name: str
    group: str
    config: RunConfig


SWEEP_RECORD = "sweep-run.json"  # in a sweep's output directory: its configurations and its parent run


def read_sweep_record(output_dir: str, configs: dict[str, Any]) -> dict[str, Any]:
    """The record of the sweep in ``output_dir``, checked to be of the same configurations (``configs``: child name
    -> its run configuration); a UsageError if there is none or it differs."""
    from .checkpoints import differences
    from .model import read_json

    path = Path(output_dir) / SWEEP_RECORD
    if not path.is_file():
        raise UsageError(f"'{output_dir}' holds no sweep to resume (no {SWEEP_RECORD}); run the sweep without --resume")
    record = read_json(path)
    configs = json.loads(json.dumps(configs))
    if sorted(record["configs"]) != sorted(configs):
        raise UsageError(f"the sweep in '{output_dir}' is of other configurations ({', '.join(record['configs'])}); "
                         f"resume it with the flags that started it")
    for name, config in configs.items():
        differ = differences(record["configs"][name], config)
        if differ:
            raise UsageError(f"the sweep in '{output_dir}' trained {name} with another configuration ({differ}); "
                             f"resume it with the flags that started it")
    return record


@contextlib.contextmanager
def parent_run(command: str, experiment: str, config: dict[str, Any], output_dir: str, tracking: bool = True,
               title: str | None = None, configs: dict[str, Any] | None = None,
               resume: bool = False) -> Iterator[RunInfo]:
    """The run that child runs nest under, with the lifecycle of any other run (FINISHED, FAILED or KILLED).

    ``<output_dir>/sweep-run.json`` records the children's ``configs`` (name -> run configuration) and the
    parent's tracker state; with ``resume``, the run that record names goes on, RUNNING again.
    """
    from .model import write_json_atomically

    configs = configs or {}
    state = read_sweep_record(output_dir, configs)["state"] if resume else {}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    parent = RunInfo(command, config, {}, experiment, tracking, run_name=title or command, state=state, resumed=resume)
    with lifecycle(parent) as outcome:
        write_json_atomically(Path(output_dir) / SWEEP_RECORD, {"configs": configs, "state": parent.state})
        outcome["output_dir"] = output_dir
        yield parent


def finished_child(child: SweepChild) -> ChildResult | None:
    """The result of a child whose model is saved already (None if it is not), checked to be of its configuration."""
    from .checkpoints import differences
    from .model import MODEL_CONFIG, read_json, read_model_config
    from .training import EVALUATION

    directory = Path(child.config.output_dir)
    if not (directory / MODEL_CONFIG).is_file():
        return None
    differ = differences(read_model_config(directory)["run"], child.config.model_dump(), ("train.precision",))
    if differ:
        raise UsageError(f"the model in '{directory}' was trained with another configuration ({differ}); resume the "
                         f"sweep with the flags that started it")
    result = EvaluationResult.from_dict(read_json(directory / EVALUATION))
    return ChildResult(child.name, child.group, child.config.train.seed, result, str(directory))


def train_children(children: list[SweepChild], parent: RunInfo, title: str = "comparison") -> Comparison:
    """Train every child as a child run of ``parent``; the comparison of their final evaluation sweeps. A child
    that fails (its run FAILED) is recorded with its error and the others still train; Ctrl-C stops them all.
    A child whose model is saved already is not trained again; one with checkpoints is resumed."""
    from .checkpoints import has_checkpoints
    from .training import train

    if not children:
        raise UsageError("the sweep has no configurations to train")
    outcomes = []
    for child in children:
        seed = child.config.train.seed
        done = finished_child(child)
        if done is not None:
            print(f"sweep: {child.name} was trained before; its model is in {done.output_dir}", file=sys.stderr)
            outcomes.append(done)
            continue
        try:
            result, child_dir = train(child.config, parent=parent, run_name=child.name,
                                      resume=has_checkpoints(child.config.output_dir))
        except Exception as exc:
            print(f"sweep: {child.name} failed: {error_line(exc)}", file=sys.stderr)
            outcomes.append(ChildResult(child.name, child.group, seed, None, child.config.output_dir, error_line(exc)))
            continue
        outcomes.append(ChildResult(child.name, child.group, seed, result, child_dir))
    metric = next((c.result.metric_name for c in outcomes if c.result is not None), "metric")
    return Comparison(metric, outcomes, title=title)


def publish(comparison: Comparison, directory: str | Path, parent: RunInfo) -> list[Path]:
    """Write the comparison's files to ``directory`` and hand the comparison to the trackers."""
    paths = comparison.write(directory)
    call_lifecycle("on_sweep_end", run=parent, comparison=comparison)
    return paths


def run_sweep(children: list[SweepChild], experiment: str, output_dir: str, tracking: bool = True,
              grid: dict[str, list[Any]] | None = None, title: str = "sweep", resume: bool = False) -> Comparison:
    """Train every child as a child run of one parent run; write and log the comparison.

    The comparison files go to ``output_dir`` and, through ``on_sweep_end``, to the trackers. A child that
    fails is a row with its error, and the others go on; then the parent ends FAILED and ``PartialSweep``
    is raised. An interrupt ends the running child and the parent KILLED; finished children stay. With
    ``resume`` the sweep in ``output_dir`` goes on under its parent run: finished children are not trained again.
    """
    config = {"grid": grid or {}, "children": [c.name for c in children]}
    configs = {c.name: c.config.model_dump() for c in children}
    with parent_run("sweep", experiment, config, output_dir, tracking, title, configs, resume) as parent:
        comparison = train_children(children, parent, title)
        publish(comparison, output_dir, parent)
        failed = comparison.failed()
        if failed:
            raise PartialSweep(f"{len(failed)} of {len(children)} configurations failed (" +
                               "; ".join(f"{c.name}: {c.error}" for c in failed) + ")", comparison)
    return comparison
