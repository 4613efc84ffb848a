"""Wall-clock speed-up of trained models at the threshold a user would store: one model per method of a study.

    python benchmarks/wallclock.py --study movie-reviews-mpnet-base outputs/compare/movie-reviews-mpnet-base/*-seed1
    python benchmarks/wallclock.py --render          # the RESULTS.md section of every study from the files alone

For each model directory (written by `benchmarks/compare.py`, named after its result file), with the signal the
comparison chose for its configuration on validation, the README's commands in order:

1. `adaptive-exit calibrate DIR --max-drop 1 --signal S` on validation stores the fastest threshold within one
   point of the full model there;
2. `adaptive-exit evaluate DIR --split test --thresholds T` gives the test accuracy that threshold costs;
3. `adaptive-exit benchmark DIR --split test --batch-sizes 1 32` times the full model against real early exit
   at that threshold (interleaved, median of passes) on the first `--samples` test samples.

Each model writes `<results>/wallclock-<study>/<stem>.json`; a model whose file exists is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (BUDGETS, ROOT, best_signal, command, commit, load_records, machine, seeds_of,  # noqa: E402
                     update_results)

PREFIX = "wallclock-"


def cli_json(*args: str) -> dict[str, Any]:
    """``adaptive-exit ARGS --json``, parsed; a failure stops the script with the command's error."""
    done = subprocess.run(command(*args, "--json"), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wallclock: adaptive-exit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def same(given: str, saved: Any) -> bool:
    """Whether a flag's value and the saved setting agree (numbers as numbers: '2' is 2.0)."""
    try:
        return float(given) == float(saved)
    except (TypeError, ValueError):
        return given == str(saved)


def trained_otherwise(model_dir: Path, flags: list[str]) -> list[str]:
    """Where the model's saved run differs from the training flags of its result file, one phrase each."""
    saved_file = model_dir / "adaptive_exit.json"
    if not saved_file.exists():
        raise SystemExit(f"wallclock: {model_dir} is not a trained model directory (no adaptive_exit.json)")
    run = json.loads(saved_file.read_text())["run"]
    options = run["weighting"]["options"]
    saved = {"--weighting": run["weighting"]["name"], "--signal": run["signal"]["name"],
             "--dataset": run["data"]["dataset"], "--backbone": run["model"]["backbone"],
             "--seed": run["train"]["seed"], "--epochs": run["train"]["epochs"],
             "--max-train-samples": run["data"]["max_train_samples"],
             "--max-eval-samples": run["data"]["max_eval_samples"],
             "--mix": options.get("mix"), "--distill": options.get("distill"), "--preset": options.get("preset")}
    given = {flag: value for flag, value in zip(flags, flags[1:]) if flag in saved}
    return [f"{flag} {value} in the file, {saved[flag]} in the model" for flag, value in given.items()
            if not same(value, saved[flag])]


def measure(model_dir: Path, study: str, results: Path, samples: int, repeats: int) -> dict[str, Any]:
    """Calibrate, evaluate and benchmark one model of ``study``, and write its result file."""
    records = load_records(results, study)
    if model_dir.name not in records:
        raise SystemExit(f"wallclock: {model_dir} has no result file in {results / study}; pass a model directory "
                         f"that benchmarks/compare.py trained for study {study}")
    record = records[model_dir.name]
    if wrong := trained_otherwise(model_dir, record["train_flags"]):
        raise SystemExit(f"wallclock: {model_dir} was not trained as its result file says ({'; '.join(wrong)}); "
                         f"retrain it with the file's train_flags")
    signal = best_signal(seeds_of(records, record["config"]))
    start = time.perf_counter()
    calibration = cli_json("calibrate", str(model_dir), "--max-drop", "1", "--signal", signal, "--split",
                           "validation", "--no-track")
    threshold = str(calibration["threshold"])
    test = cli_json("evaluate", str(model_dir), "--split", "test", "--signal", signal, "--thresholds", threshold,
                    "--no-track")
    (point,) = test["curve"]
    bench = cli_json("benchmark", str(model_dir), "--split", "test", "--signal", signal, "--threshold", threshold,
                     "--batch-sizes", "1", "32", "--max-eval-samples", str(samples), "--repeats", str(repeats))
    found = {"study": study, "method": record["method"], "config": record["config"], "seed": record["seed"],
             "signal": signal, "threshold": calibration["threshold"],
             "validation": {"speedup": calibration["speedup"], "accuracy": calibration["metric"],
                            "full_accuracy": calibration["full_metric"]},
             "test": {"speedup": point["speedup"], "accuracy": point["metric"],
                      "full_accuracy": test["per_exit_metric"][-1], "samples": test["num_samples"]},
             "benchmark": bench, "seconds": round(time.perf_counter() - start, 1), "commit": commit(),
             "date": datetime.date.today().isoformat(), "machine": machine()}
    folder = results / f"{PREFIX}{study}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model_dir.name}.json").write_text(json.dumps(found, indent=1) + "\n")
    return found


def section(folder: Path) -> str:
    """The RESULTS.md section of one study's wall-clock files."""
    study = folder.name.removeprefix(PREFIX)
    found = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    first = found[0]
    lines = [f"## Wall-clock speed-up on {study}, at the threshold `calibrate --max-drop 1` stores", "",
             f"Written by `python benchmarks/wallclock.py --render` from `benchmarks/results/{folder.name}/`; "
             f"measured by `python benchmarks/wallclock.py --study {study} MODEL_DIR...` on {first['machine']}, "
             f"{first['benchmark']['precision']}, one model per method. The threshold is the "
             f"fastest within one accuracy point of the full model on validation, with the signal the comparison "
             f"chose for the configuration; the test columns say what it costs on the "
             f"{first['test']['samples']:,} test samples, and the timings are on the first "
             f"{first['benchmark']['samples']} of them (median of the passes, full model and early exit "
             f"interleaved batch by batch; efficiency = measured speed-up / layer speed-up).", "",
             "| method (configuration) | signal | test accuracy: full → early (drop) | layer speed-up (test) | "
             "batch 1: measured (efficiency) | batch 32: measured (efficiency) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(found, key=lambda r: r["method"]):
        test, batches = r["test"], r["benchmark"]["batch_sizes"]
        timed = [f"{batches[b]['measured_speedup']:.2f}x ({batches[b]['efficiency']:.2f})" for b in ("1", "32")]
        lines.append(f"| {r['method']} ({r['config']}, seed {r['seed']}) | {r['signal']} | {test['full_accuracy']:.4f} → "
                     f"{test['accuracy']:.4f} ({100 * (test['full_accuracy'] - test['accuracy']):+.1f} points) | "
                     f"{test['speedup']:.2f}x | {timed[0]} | {timed[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="*", type=Path, help="model directories that compare.py trained")
    parser.add_argument("--study", choices=sorted(BUDGETS), help="the comparison the models belong to")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the result files (default: benchmarks/results)")
    parser.add_argument("--samples", type=int, default=300, help="test samples timed (default: 300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default: 3)")
    parser.add_argument("--render", action="store_true", help="measure nothing: write the sections from the files")
    parser.add_argument("--results-file", type=Path, default=ROOT / "docs" / "RESULTS.md", help="file to write")
    args = parser.parse_args(argv)
    if not args.render:
        if not args.study or not args.model_dirs:
            parser.error("give --study and the model directories to measure, or --render")
        for model_dir in args.model_dirs:
            if (args.results / f"{PREFIX}{args.study}" / f"{model_dir.name}.json").exists():
                print(f"{model_dir.name}: measured already (its file exists)")
                continue
            print(f"[{time.strftime('%H:%M')}] {model_dir.name}", flush=True)
            r = measure(model_dir, args.study, args.results, args.samples, args.repeats)
            batches = r["benchmark"]["batch_sizes"]
            print(f"  threshold {r['threshold']:.4g} ({r['signal']}): test {r['test']['accuracy']:.4f} of "
                  f"{r['test']['full_accuracy']:.4f}, layer speed-up {r['test']['speedup']:.2f}x; measured "
                  f"{batches['1']['measured_speedup']:.2f}x at batch 1, {batches['32']['measured_speedup']:.2f}x at "
                  f"batch 32 ({r['seconds']:.0f} s)", flush=True)
    for folder in sorted(args.results.glob(f"{PREFIX}*")):
        update_results(args.results_file, folder.name, section(folder))
    print(f"wrote {args.results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
