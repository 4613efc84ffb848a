"""COSEE against the classic baselines, trained and evaluated the same way, written to docs/RESULTS.md.

Every method gets the same backbone, data, seed, training budget and one hyper-parameter configuration
(its defaults). Each trains as a child run of one MLflow parent run, is swept on the validation split
(where any choice is made) and on the test split (what the tables report), as the mean and sample
standard deviation over the seeds. COSEE's beta0 grid is reported beside, as tuning rows that are not
part of the equal-budget comparison.

    python benchmarks/compare.py --dataset movie-reviews --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptive_exit import ChildResult, Comparison, UsageError
from adaptive_exit.cli import quiet_libraries
from adaptive_exit.config import build_config
from adaptive_exit.evaluation import SPEEDUP_MARKS, evaluate_model_dir
from adaptive_exit.sweeps import SweepChild, parent_run, publish, train_children
from adaptive_exit.training import resolve_options

ROOT = Path(__file__).resolve().parents[1]
JOINT = "joint training (entropy)"


@dataclass(frozen=True)
class Method:
    """A weighting and a signal; ``reuse`` evaluates another method's trained model with this signal instead
    of training (the same training, as the weighting does not read the signal); ``tuning`` marks rows
    outside the equal-budget comparison."""

    name: str
    weighting: str
    signal: str
    weighting_options: dict[str, Any] = field(default_factory=dict)
    signal_options: dict[str, Any] = field(default_factory=dict)
    reuse: str | None = None
    tuning: bool = False


METHODS = (
    Method("COSEE (energy)", "cosee", "energy"),
    Method("COSEE (entropy)", "cosee", "entropy"),
    Method("COSEE w/o OSC (energy)", "cosee", "energy", {"osc": False}),
    Method("COSEE w/o SWM (energy)", "cosee", "energy", {"swm": False}),
    Method("PABEE", "weighted-average", "patience"),
    Method("DeeBERT", "two-stage", "entropy"),
    Method("BERxiT", "alternating", "lte"),
    Method("PCEE-BERT", "uniform", "patience-confidence", reuse=JOINT),
    Method("static budget (BERT-kL)", "uniform", "static", reuse=JOINT),
    Method(JOINT, "uniform", "entropy"),
    Method("COSEE (energy) beta0=1", "cosee", "energy", {"beta0": 1.0}, tuning=True),
    Method("COSEE (energy) beta0=0.2", "cosee", "energy", {"beta0": 0.2}, tuning=True),
)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def child_config(method: Method, seed: int, args: argparse.Namespace, output_dir: Path, experiment: str) -> Any:
    """The training config of one method and seed."""
    data = {"dataset": args.dataset, "max_train_samples": args.max_train_samples, "eval_split": "validation",
            "max_length": args.max_length}
    if args.max_eval_samples:
        data["max_eval_samples"] = args.max_eval_samples
    values = {
        "model": {"num_layers": args.num_layers},
        "data": data,
        "train": {"epochs": args.epochs, "seed": seed, "batch_size": args.batch_size},
        "signal": {"name": method.signal, "options": method.signal_options},
        "weighting": {"name": method.weighting, "options": method.weighting_options},
        "tracking": {"enabled": not args.no_track, "experiment": experiment, "log_model": False},
        "output_dir": str(output_dir / slug(f"{method.name} seed={seed}")),
    }
    return resolve_options(build_config(values))


def evaluate(child: ChildResult, method: Method, split: str, args: argparse.Namespace, parent: Any) -> ChildResult:
    """Sweep a trained child's model on ``split`` with ``method``'s signal, as a child run of ``parent``."""
    name = f"{method.name} seed={child.seed}"
    result = evaluate_model_dir(child.output_dir, signal=method.signal, signal_options=method.signal_options,
                                split=split, max_samples=args.max_eval_samples, track=not args.no_track,
                                parent=parent, run_name=f"{name} {split}")
    return ChildResult(name, method.name, child.seed, result, child.output_dir)


def ordered(comparison: Comparison) -> Comparison:
    """The comparison with its children in the order of ``METHODS``, then seed."""
    rank = {m.name: i for i, m in enumerate(METHODS)}
    comparison.children.sort(key=lambda c: (rank[c.group], c.seed))
    return comparison


def cell(mean: float | None, spread: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.4f} ± {spread:.4f}"


def results_section(args: argparse.Namespace, test: Comparison, validation: Comparison, minutes: float | None,
                    commit: str, figure: str) -> str:
    """The Markdown section for one dataset: command, machine, budget, table, plot and plain findings."""
    name = test.metric_name
    marks = [f"{m:g}" for m in SPEEDUP_MARKS]
    rows = {row["configuration"]: row for row in test.rows()}
    valid = {row["configuration"]: row for row in validation.rows()}
    num_exits = len(test.children[0].result.per_exit_metric)
    argv = sys.argv[1:]
    if "--render-from" in argv:
        at = argv.index("--render-from")
        argv = argv[:at] + argv[at + 2:]
    command = "python benchmarks/compare.py " + shlex.join(argv)
    took = "" if minutes is None else f" in {minutes:.0f} minutes"
    lines = [
        f"## {args.dataset}",
        "",
        f"Produced by `{command}` on {datetime.date.today().isoformat()} at commit `{commit}`{took}, "
        f"on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU.",
        "",
        f"Budget, the same for every method: MiniLM-L6 ({num_exits} of its 6 layers), "
        f"{'all' if args.max_train_samples is None else f'the first {args.max_train_samples:,}'} training samples, "
        f"{args.epochs} epoch(s), batch size {args.batch_size}, max length {args.max_length}, the engine's default "
        f"learning rates, seeds {', '.join(map(str, args.seeds))}; one configuration per method (its defaults). "
        f"Test split{'' if not args.max_eval_samples else f' (first {args.max_eval_samples:,})'}, mean ± sample "
        f"standard deviation over the seeds. The validation AUC is where a choice would be made.",
        "",
        f"| method | test AUC | {' | '.join(f'{name} @{m}x' for m in marks)} | exit 1 {name} | validation AUC |",
        "|---|---|" + "---|" * len(marks) + "---|---|",
    ]
    for method in METHODS:
        row = rows.get(method.name)
        if row is None:
            continue
        label = f"{method.name} *(tuning row)*" if method.tuning else method.name
        cells = [cell(row["auc_mean"], row["auc_std"])]
        cells += [cell(row[f"{name}_at_{m}x_mean"], row[f"{name}_at_{m}x_std"]) for m in marks]
        cells.append(f"{row[f'exit_1_{name}_mean']:.4f}")
        cells.append(cell(valid[method.name]["auc_mean"], valid[method.name]["auc_std"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    full = rows[JOINT][f"exit_{num_exits}_{name}_mean"]
    lines += [
        "",
        f"Full model (the joint-training model's last exit, 1x): test {name} {full:.4f}.",
        "",
        f"AUC is the mean {name} over the layer speed-ups a method's curve spans (area divided by span): 1x..{num_exits}x "
        f"for most, but PCEE-BERT cannot leave before its window of exits is full, so its curve stops earlier and its "
        f"AUC averages only that easier range; compare methods at the marked speed-ups. `n/a` where a curve does not "
        f"reach that speed-up. PCEE-BERT and the static budget are the "
        f"joint-training model read with their signals (their training is the same). The tuning rows are "
        f"COSEE with smaller beta0; they had more configurations than the others, so they are not part of the "
        f"equal-budget ranking.",
        "",
        f"![{name} against layer speed-up on {args.dataset}]({figure})",
        "",
        f"Findings, from the test {name} at 2x layer speed-up above:",
        "",
    ]
    lines += findings(rows, name)
    return "\n".join(lines) + "\n"


def findings(rows: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Plain statements of where each COSEE variant is above or below each baseline, by the test metric at 2x
    layer speed-up (a point every method reaches; AUCs over different spans are not comparable)."""
    key = f"{metric}_at_2x_mean"
    baselines = [m.name for m in METHODS if not m.name.startswith("COSEE") and rows.get(m.name, {}).get(key)]
    out = []
    for method in METHODS:
        if not method.name.startswith("COSEE") or method.name not in rows:
            continue
        value = rows[method.name][key]
        above = [f"{b} ({rows[b][key]:.4f})" for b in baselines if rows[b][key] > value]
        below = [b for b in baselines if rows[b][key] <= value]
        text = f"- **{method.name}** ({metric} at 2x {value:.4f})"
        text += f" is behind {', '.join(above)}" if above else " is behind none of the baselines"
        text += f"; ahead of {', '.join(below)}." if below else "; ahead of none."
        out.append(text)
    return out


def update_results(path: Path, dataset: str, section: str) -> None:
    """Put the dataset's section into the results file, replacing an earlier one."""
    begin, end = f"<!-- compare:{dataset} -->", f"<!-- /compare:{dataset} -->"
    text = path.read_text() if path.exists() else (
        "# Results: COSEE and the baselines on the same runs\n\n"
        "Written by `benchmarks/compare.py`; each section says the command that produced it.\n")
    block = f"{begin}\n{section}{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movie-reviews", help="dataset (default: movie-reviews)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default: 1,2,3)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs for every method (default: 1)")
    parser.add_argument("--max-train-samples", type=int, help="use the first N training samples (default: all)")
    parser.add_argument("--max-eval-samples", type=int, help="use the first N validation and test samples")
    parser.add_argument("--num-layers", type=int, help="keep only the first N layers of the backbone (default: all)")
    parser.add_argument("--max-length", type=int, default=64, help="maximum tokens per sample (default: 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--methods", help="comma-separated method names to run (default: all)")
    parser.add_argument("--output-dir", help="models and comparison files (default: outputs/compare-<dataset>-<time>)")
    parser.add_argument("--results", default=str(ROOT / "docs" / "RESULTS.md"), help="results file to update")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--render-from", metavar="DIR", help="train nothing: write the results from the comparison "
                                                              "files a run with the same flags left in DIR")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas (got {args.seeds!r})")
    chosen = set(args.methods.split(",")) if args.methods else {m.name for m in METHODS}
    unknown = chosen - {m.name for m in METHODS}
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in METHODS)}")
    methods = [m for m in METHODS if m.name in chosen]
    if any(m.reuse and m.reuse not in chosen for m in methods):
        parser.error(f"PCEE-BERT and the static budget read the model of '{JOINT}'; include it in --methods")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir or f"outputs/compare-{slug(args.dataset)}-{stamp}")
    experiment = f"compare-{args.dataset}"
    started = time.time()
    if args.render_from:
        validation = Comparison.read(Path(args.render_from) / "validation" / "comparison.json", "validation")
        test = Comparison.read(Path(args.render_from) / "test" / "comparison.json", "test")
        write_results(args, test, validation, *last_run(experiment, args.no_track), chosen)
        return 0
    try:
        children = [SweepChild(f"{m.name} seed={seed}", m.name, child_config(m, seed, args, output_dir, experiment))
                    for seed in args.seeds for m in methods if m.reuse is None]
        config = {"methods": [m.name for m in methods], "seeds": args.seeds, "dataset": args.dataset,
                  "epochs": args.epochs, "max_train_samples": args.max_train_samples}
        title = f"COSEE and baselines on {args.dataset}"
        with parent_run("compare", experiment, config, str(output_dir), not args.no_track, title) as parent:
            validation = train_children(children, parent, title)
            validation.name = "validation"
            test = Comparison(validation.metric_name, title=f"{title} (test)", name="test")
            for child in list(validation.children):
                trained = next(m for m in methods if m.name == child.group)
                test.children.append(evaluate(child, trained, "test", args, parent))
                for method in (m for m in methods if m.reuse == child.group):
                    validation.children.append(evaluate(child, method, "validation", args, parent))
                    test.children.append(evaluate(child, method, "test", args, parent))
            for comparison in (ordered(validation), ordered(test)):
                publish(comparison, output_dir / comparison.name, parent)
    except UsageError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    write_results(args, test, validation, (time.time() - started) / 60, current_commit(), chosen)
    return 0


def current_commit() -> str:
    """The short git commit of this checkout."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def last_run(experiment: str, offline: bool) -> tuple[float | None, str]:
    """How long the latest comparison run of the experiment took (minutes) and its commit, from MLflow."""
    if offline:
        return None, "unknown"
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`adaptive_exit.command` = 'compare'",
                              order_by=["start_time DESC"], max_results=1, output_format="list")
    if not runs or runs[0].info.end_time is None:
        return None, "unknown"
    commit = runs[0].data.tags.get("mlflow.source.git.commit", "unknown")[:7]
    return (runs[0].info.end_time - runs[0].info.start_time) / 60000, commit


def write_results(args: argparse.Namespace, test: Comparison, validation: Comparison, minutes: float | None,
                  commit: str, chosen: set[str]) -> None:
    """Print the test table; write the figure and (with the joint-training reference) the results section."""
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    figure = results.parent / f"results-{slug(args.dataset)}.png"
    test.plot(figure)
    print(test.table())
    if JOINT in chosen:
        update_results(results, args.dataset, results_section(args, test, validation, minutes, commit, figure.name))
        print(f"\nUpdated {results} and {figure}")


if __name__ == "__main__":
    sys.exit(main())
