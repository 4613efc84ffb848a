"""Does the fast training default cost quality or time? Whole `train` runs, each result kept as a file.

    python benchmarks/training_quality.py [--seeds 1,2,3] [--epochs 2] [--results DIR] [--work DIR]
    python benchmarks/training_quality.py --render      # docs/RESULTS.md's section from the result files alone

Two experiments, each a list of real `adaptive-exit train` commands run one at a time:
- timing: the README's first command (COSEE, entropy, 1 epoch, full movie-reviews split) at the fast
  default and with `--precision fp32 --no-group-by-length`; the wall time of each whole command;
- quality: `uniform` joint training, full movie-reviews split, `--epochs` epochs, each seed, at the
  fast default and at fp32 with random batches; test accuracy of the final exit and test AUC, from
  `evaluate --split test` in the precision the model was trained in.
Each finished run writes `<results>/<name>.json`; a run whose file exists is skipped, so an
interrupted comparison resumes where it stopped. The tables go into docs/RESULTS.md (section
`training-speed`), together with `<results>/benchmark-train.json` if it is there (the output of
`python benchmarks/training.py --json`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import update_results  # noqa: E402  (benchmarks/ is not a package)

SLOW = ["--precision", "fp32", "--no-group-by-length"]


def planned(seeds: list[int], epochs: int) -> list[tuple[str, list[str], str]]:
    """(name, train flags, precision to evaluate in) of every run, in the order they run."""
    readme = ["--weighting", "cosee", "--signal", "entropy", "--epochs", "1", "--seed", "1"]
    runs = [("timing-default", readme, "auto"), ("timing-fp32-random", readme + SLOW, "fp32")]
    for seed in seeds:
        flags = ["--weighting", "uniform", "--signal", "entropy", "--epochs", str(epochs), "--seed", str(seed)]
        runs += [(f"quality-default-seed{seed}", flags, "auto"), (f"quality-fp32-random-seed{seed}", flags + SLOW, "fp32")]
    return runs


def command(*args: str) -> list[str]:
    """``adaptive-exit ARGS`` as a subprocess command line of this Python."""
    return [sys.executable, "-m", "adaptive_exit", *args]


def run_one(name: str, flags: list[str], precision: str, results: Path, work: Path, split: str = "test") -> None:
    """Train, time, evaluate on ``split``, and write ``<results>/<name>.json``."""
    output_dir = work / name
    if output_dir.exists():
        subprocess.run(["rm", "-rf", str(output_dir)], check=True)
    start = time.perf_counter()
    done = subprocess.run(command("train", *flags, "--no-track", "--output-dir", str(output_dir)),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: train failed:\n{done.stderr[-3000:]}")
    setup = next((line for line in done.stderr.splitlines() if "training on" in line), "")
    test = subprocess.run(command("evaluate", str(output_dir), "--split", split, "--json", "--no-track",
                                  "--precision", precision), capture_output=True, text=True)
    if test.returncode != 0:
        raise SystemExit(f"{name}: evaluate failed:\n{test.stderr[-3000:]}")
    result = json.loads(test.stdout)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    record = {"name": name, "train_flags": flags, "setup": setup.removeprefix("adaptive-exit: "),
              "train_seconds": round(seconds, 1), f"{split}_final_accuracy": result["per_exit_metric"][-1],
              f"{split}_auc": result["auc"], f"{split}_per_exit_accuracy": result["per_exit_metric"],
              f"{split}_metric_at": result["metric_at"], "commit": commit.stdout.strip(),
              "date": time.strftime("%Y-%m-%d")}
    (results / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {seconds:.0f} s, {split} accuracy {record[f'{split}_final_accuracy']:.4f}, "
          f"AUC {record[f'{split}_auc']:.4f}", flush=True)


def mean_std(values: list[float]) -> str:
    """'mean ± sample standard deviation' with four decimals."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def render(results: Path) -> str:
    """The results section in markdown (benchmark, timing and quality tables), from the result files."""
    records = {p.stem: json.loads(p.read_text())
               for p in sorted(results.glob("*.json"), key=lambda p: (len(p.stem), p.stem))}
    runs = [r for n, r in records.items() if n.startswith(("timing-", "quality-"))]
    lines = ["## Training speed: mixed precision and length-grouped batches", ""]
    bench = records.get("benchmark-train")
    if bench:
        lines += [f"`python benchmarks/training.py --json` ({bench['backbone']}, {bench['num_exits']} exits, "
                  f"{bench['dataset']} training split, batch {bench['batch_size']}, {bench['device']} with "
                  f"{bench['torch_threads']} threads; {bench['steps']} steps per configuration on batches spread "
                  f"evenly over an epoch's padded lengths, {bench['repeats']} interleaved groups, medians):", "",
                  "| configuration | samples/s | s/step | padded tokens/s | real tokens/s | padding | vs fp32-random |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in bench["configs"].items():
            lines.append(f"| {name} | {row['samples_per_second']:.1f} | {row['seconds_per_step']:.3f} | "
                         f"{row['padded_tokens_per_second']:.0f} | {row['real_tokens_per_second']:.0f} | "
                         f"{row['padding_share']:.0%} | {row['vs_fp32_random']:.2f}x |")
        lines += [""]
    if runs:
        commits = ", ".join(sorted({f"`{r['commit']}`" for r in runs}))
        dates = ", ".join(sorted({r["date"] for r in runs}))
        lines += [f"Whole `adaptive-exit train` runs by `python benchmarks/training_quality.py` on {dates} at "
                  f"commit {commits}, one at a time, full movie-reviews training split (8,568 sentences); test "
                  f"numbers from `evaluate --split test` in the precision each model was trained in.", ""]
    fast, slow = records.get("timing-default"), records.get("timing-fp32-random")
    if fast and slow:
        lines += ["| `train --weighting cosee --signal entropy` (1 epoch) | setup | wall time |", "|---|---|---|",
                  f"| default | {fast['setup']} | {fast['train_seconds']:.0f} s |",
                  f"| `--precision fp32 --no-group-by-length` | {slow['setup']} | {slow['train_seconds']:.0f} s |",
                  "", f"Speed-up of the whole command: **{slow['train_seconds'] / fast['train_seconds']:.2f}x**.", ""]
    rows, found_by = [], {}
    for variant, label in (("default", "default (bf16 where native, length-grouped)"),
                           ("fp32-random", "`--precision fp32 --no-group-by-length`")):
        found = [r for n, r in records.items() if n.startswith(f"quality-{variant}-seed")]
        found_by[variant] = found
        if found:
            seeds = ", ".join(n.rsplit("seed", 1)[1] for n in records if n.startswith(f"quality-{variant}-seed"))
            rows.append(f"| {label} | {seeds} | {mean_std([r['test_final_accuracy'] for r in found])} | "
                        f"{mean_std([r['test_auc'] for r in found])} | "
                        f"{statistics.mean(r['train_seconds'] for r in found):.0f} s |")
    if rows:
        flags = next(r["train_flags"] for n, r in records.items() if n.startswith("quality-"))
        lines += [f"| uniform, entropy, {flags[flags.index('--epochs') + 1]} epochs | seeds | final-exit test accuracy | test AUC | wall time per run |",
                  "|---|---|---|---|---|", *rows, "", "Mean ± sample standard deviation over the seeds."]
        fast, slow = found_by.get("default"), found_by.get("fp32-random")
        if fast and slow and len(slow) > 1:
            verdicts = []
            for key, label in (("test_final_accuracy", "final-exit accuracy"), ("test_auc", "AUC")):
                gap = statistics.mean(r[key] for r in fast) - statistics.mean(r[key] for r in slow)
                spread = statistics.stdev(r[key] for r in slow)
                verdict = ("better by more than one standard deviation" if gap > spread
                           else "within one standard deviation" if -gap <= spread else "worse")
                verdicts.append(f"{label} {gap:+.4f} ({verdict}; fp32 std {spread:.4f})")
            lines += ["", "The fast default against fp32 with random batches, difference of the means: "
                      + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


def add_run_arguments(parser: argparse.ArgumentParser, name: str, work: str) -> None:
    """The flags of a benchmark that runs whole trainings into ``benchmarks/results/<name>``: --results,
    --work, --render and --results-file."""
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / name),
                        help=f"folder of the result files (default: benchmarks/results/{name})")
    parser.add_argument("--work", default=work, help="where the models go")
    parser.add_argument("--render", action="store_true", help="only write the section from the result files")
    parser.add_argument("--results-file", default=str(ROOT / "docs" / "RESULTS.md"), help="file to put the section in")


def run_missing_then_render(args: argparse.Namespace, runs: list[tuple[str, list[str], str]], split: str,
                            render_section: Any, section: str) -> int:
    """Run each (name, train flags, precision) without a result file (unless --render), then put
    ``render_section(results)`` into the results file as ``section`` and print it."""
    results = Path(args.results)
    if not args.render:
        results.mkdir(parents=True, exist_ok=True)
        for name, flags, precision in runs:
            if (results / f"{name}.json").exists():
                print(f"{name}: done before, skipped", flush=True)
                continue
            run_one(name, flags, precision, results, Path(args.work), split=split)
    text = render_section(results)
    update_results(Path(args.results_file), section, text)
    print(text)
    return 0


def main() -> int:
    """Run what has no result file yet, then write the section."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="seeds of the quality runs (default: 1,2,3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the quality runs (default: 2)")
    add_run_arguments(parser, "throughput", "outputs/training-quality")
    args = parser.parse_args()
    runs = planned([int(s) for s in args.seeds.split(",")], args.epochs)
    return run_missing_then_render(args, runs, "test", render, "training-speed")


if __name__ == "__main__":
    sys.exit(main())
