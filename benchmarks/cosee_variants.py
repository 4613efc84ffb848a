"""COSEE's options against plain joint training at a small budget, chosen on validation.

    python benchmarks/cosee_variants.py [--signals entropy,energy] [--seeds 1] [--variants NAME,...]
    python benchmarks/cosee_variants.py --render     # docs/RESULTS.md's section from the result files alone

Every variant is one `adaptive-exit train` on the first 2,000 movie-reviews training sentences for
1 epoch (`--max-train-samples`, `--epochs` change that), evaluated on the validation split. Each
finished run writes `<results>/<variant>-<signal>-seed<seed>.json` (skipped when it exists, so the
runs resume). The table (validation AUC, accuracy at 2x and 3x, per-exit accuracy; mean over the
seeds found) goes into docs/RESULTS.md (section `cosee-variants`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_quality import add_run_arguments, run_missing_then_render  # noqa: E402  (not a package)

# COSEE with every departure off (the paper), so that a variant names all it turns on; a later flag wins
COSEE = ["--weighting", "cosee", "--mix", "0", "--distill", "0"]
PAPER = ["--weighting", "cosee", "--preset", "paper"]
VARIANTS = {
    "uniform": ["--weighting", "uniform"],
    "cosee-paper": PAPER,
    "cosee-mix0.3": [*COSEE, "--mix", "0.3"],
    "cosee-mix0.6": [*COSEE, "--mix", "0.6"],
    "cosee-per-exit-norm": [*COSEE, "--per-exit-norm"],
    "cosee-quantiles": [*COSEE, "--quantile-thresholds"],
    "cosee-quantiles-mix0.3": [*COSEE, "--quantile-thresholds", "--mix", "0.3"],
    "cosee-quantiles-mix0.6": [*COSEE, "--quantile-thresholds", "--mix", "0.6"],
    "cosee-quantiles-mix0.3-beta1": [*COSEE, "--quantile-thresholds", "--mix", "0.3", "--beta0", "1"],
    "cosee-quantiles-mix0.3-no-osc": [*COSEE, "--quantile-thresholds", "--mix", "0.3", "--no-osc"],
    "cosee-mix0.6-beta1": [*COSEE, "--mix", "0.6", "--beta0", "1"],
    "cosee-no-swm": [*COSEE, "--no-swm"],
    "cosee-warmup0.5": [*COSEE, "--warmup", "0.5"],
    "cosee-distill1": [*COSEE, "--distill", "1"],
    "cosee-mix0.6-distill1": [*COSEE, "--mix", "0.6", "--distill", "1"],
    "cosee-warmup0.5-distill1": [*COSEE, "--warmup", "0.5", "--distill", "1"],
    "cosee-beta0.2": [*COSEE, "--beta0", "0.2"],
    "cosee-distill2": [*COSEE, "--distill", "2"],
    "cosee-quantiles-distill1": [*COSEE, "--quantile-thresholds", "--distill", "1"],
    "cosee-mix0.6-distill2": [*COSEE, "--mix", "0.6", "--distill", "2"],
    "cosee-mix0.8-distill1": [*COSEE, "--mix", "0.8", "--distill", "1"],
    "cosee-mix0.8-distill2": [*COSEE, "--mix", "0.8", "--distill", "2"],
    "cosee-mix0.6-distill1-beta0.2": [*COSEE, "--mix", "0.6", "--distill", "1", "--beta0", "0.2"],
}


def render(results: Path) -> str:
    """The results section: mean validation numbers of each variant and signal over the seeds found."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*.json")):
        groups.setdefault(path.stem.rsplit("-seed", 1)[0], []).append(json.loads(path.read_text()))
    lines = ["## COSEE's options at a small budget", "",
             "`python benchmarks/cosee_variants.py`: each variant is one `adaptive-exit train` on the first 2,000 "
             "movie-reviews training sentences for 1 epoch, read on the validation split with the signal it was "
             "trained with; mean over the seeds in the `seeds` column. `VARIANTS` in the script gives each "
             "name's flags (`cosee-paper` is `--preset paper`; the COSEE defaults are `--mix 0.6 --distill 1`, "
             "the `cosee-mix0.6-distill1` rows). The options are explained in `plugins/cosee/README.md`.", "",
             "| variant, signal | seeds | validation AUC | acc @2x | acc @3x | per-exit accuracy (exit 1 → L) |",
             "|---|---|---|---|---|---|"]
    for name, records in groups.items():
        def mean(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            return f"{statistics.mean(known):.4f}" if known else "n/a"

        exits = zip(*[r["validation_per_exit_accuracy"] for r in records])
        lines.append(f"| {name} | {len(records)} | {mean([r['validation_auc'] for r in records])} | "
                     f"{mean([r['validation_metric_at']['2'] for r in records])} | "
                     f"{mean([r['validation_metric_at']['3'] for r in records])} | "
                     f"{' '.join(f'{statistics.mean(e):.3f}' for e in exits)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the variants that have no result file yet, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", default="entropy", help="comma-separated signals (default: entropy)")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (default: 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--max-train-samples", default="2000", help="training sentences (default: 2000)")
    parser.add_argument("--epochs", default="1", help="epochs (default: 1)")
    add_run_arguments(parser, "cosee-variants", "outputs/cosee-variants")
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    runs = [(f"{variant}-{signal}-seed{seed}",
             [*VARIANTS[variant], "--signal", signal, "--seed", seed, "--epochs", args.epochs,
              "--max-train-samples", args.max_train_samples], "auto")
            for seed in args.seeds.split(",") for signal in args.signals.split(",")
            for variant in args.variants.split(",")]
    return run_missing_then_render(args, runs, "validation", render, "cosee-variants")


if __name__ == "__main__":
    sys.exit(main())
