"""COSEE against joint training and the classic baselines: resumable trainings, one result file each.

    python benchmarks/compare.py --dataset movie-reviews     # run what is missing, then write docs/RESULTS.md
    python benchmarks/compare.py --dataset snli --plan       # list what is missing, with a time estimate
    python benchmarks/compare.py --render-from benchmarks/results    # docs/RESULTS.md from the files alone
    python benchmarks/compare.py --dataset movie-reviews-rating     # the regression comparison (issue 13)
    python benchmarks/compare.py --dataset snli --backbone mpnet-base --plan   # the 12-layer comparison (issue 21)

Protocol (issue 10). Each method has at most three training configurations; each configuration trains
with seed 1, the one with the best validation AUC is the method's choice, and only it trains with seeds
2 and 3. A training is evaluated with every parameter-free signal (and with its own learned signal, if
it has one) on the validation and the test split, from one all-exits pass per split, so a weighting is
never confounded with the signal it happens to be read with. The signal of a row is chosen on
validation too. Every finished training writes `<results>/<study>/<configuration>-seed<k>.json`, where the
study is the dataset, or `<dataset>-<backbone>` for another backbone than MiniLM-L6
(configuration, budget, timing, commit, per-exit metric, every signal's full validation and test
curve, COSEE's per-exit weight shares); a training whose file exists is skipped, so the comparison
can be completed over several sittings, and `--render-from` rebuilds the results from the files.
The per-exit metric is the task's (accuracy; Pearson for regression), under the key `per_exit_accuracy`
in every file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("validation", "test")
EVAL_SIGNALS = {  # the parameter-free signals of each task
    "classification": ("entropy", "maxprob", "energy", "patience", "patience-confidence", "static"),
    "regression": ("change", "patience", "static"),
}
METRIC_WORD = {"classification": "accuracy", "regression": "Pearson"}
JOINT = "joint training"
COSEE_METHODS = ("COSEE (adaptive-exit)", "COSEE (paper)")
BASELINES = ("PABEE", "DeeBERT", "BERxiT")


@dataclass(frozen=True)
class Config:
    """One training configuration: a file-name key and the `adaptive-exit train` flags that make it."""

    key: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Method:
    """A method and its candidate configurations (at most three, chosen between on validation)."""

    name: str
    configs: tuple[Config, ...]


METHODS = (
    Method(JOINT, (Config("uniform", ("--weighting", "uniform", "--signal", "entropy")),)),
    Method("COSEE (adaptive-exit)", (
        Config("cosee-mix0.6-energy", ("--weighting", "cosee", "--mix", "0.6", "--distill", "0", "--signal", "energy")),
        Config("cosee-mix0.6-distill1-entropy",
               ("--weighting", "cosee", "--mix", "0.6", "--distill", "1", "--signal", "entropy")),
        Config("cosee-mix0.6-distill1-energy",
               ("--weighting", "cosee", "--mix", "0.6", "--distill", "1", "--signal", "energy")),
    )),
    Method("COSEE (paper)", (
        Config("cosee-paper-energy", ("--weighting", "cosee", "--preset", "paper", "--signal", "energy")),
        Config("cosee-paper-entropy", ("--weighting", "cosee", "--preset", "paper", "--signal", "entropy")),
    )),
    Method("PABEE", (Config("weighted-average", ("--weighting", "weighted-average", "--signal", "patience")),)),
    Method("DeeBERT", (Config("two-stage", ("--weighting", "two-stage", "--signal", "entropy")),)),
    Method("BERxiT", (Config("alternating-lte", ("--weighting", "alternating", "--signal", "lte")),)),
)
DEEP_METHODS = (  # the issue-21 comparison on 12 layers: joint training, COSEE's defaults and two alternatives, the
    # paper's COSEE and PABEE (the best baseline on MiniLM), each with the training signal MiniLM chose on movie-reviews
    Method(JOINT, (Config("uniform", ("--weighting", "uniform", "--signal", "entropy")),)),
    Method("COSEE (adaptive-exit)", (
        Config("cosee-mix0.6-distill1-energy",
               ("--weighting", "cosee", "--mix", "0.6", "--distill", "1", "--signal", "energy")),
        # with 12 exits the uniform part of the mix spreads thinner: a smaller one leaves COSEE more to decide
        Config("cosee-mix0.3-distill1-energy",
               ("--weighting", "cosee", "--mix", "0.3", "--distill", "1", "--signal", "energy")),
        Config("cosee-mix0.6-distill2-energy",
               ("--weighting", "cosee", "--mix", "0.6", "--distill", "2", "--signal", "energy")),
    )),
    Method("COSEE (paper)", (Config("cosee-paper-energy", ("--weighting", "cosee", "--preset", "paper", "--signal",
                                                          "energy")),)),
    Method("PABEE", (Config("weighted-average", ("--weighting", "weighted-average", "--signal", "patience")),)),
)
DEEP_CORE = DEEP_METHODS[:3]  # without PABEE: on snli the issue lets the baseline go, to keep three sittings
REGRESSION_METHODS = (  # the issue-13 comparison: joint training, both COSEE methods and PABEE
    Method(JOINT, (Config("uniform-change", ("--weighting", "uniform", "--signal", "change")),)),
    Method("COSEE (adaptive-exit)", (
        Config("cosee-mix0.6-distill1-change", ("--weighting", "cosee", "--mix", "0.6", "--distill", "1", "--signal",
                                                "change")),
        # change's bounds span the whole target range, and thresholds drawn from them let most samples leave at
        # exit 2 (which held 0.35-0.50 of the weight through the seed-1 training); quantiles of the batch's changes
        # follow the data from the first step
        Config("cosee-quantiles-mix0.6-distill1-change", ("--weighting", "cosee", "--quantile-thresholds", "--mix",
                                                          "0.6", "--distill", "1", "--signal", "change")),
    )),
    Method("COSEE (paper)", (Config("cosee-paper-change", ("--weighting", "cosee", "--preset", "paper", "--signal",
                                                          "change")),)),
    Method("PABEE", (Config("weighted-average-patience", ("--weighting", "weighted-average", "--signal",
                                                          "patience")),)),
)


@dataclass(frozen=True)
class Budget:
    """What every training of a study gets; ``baselines`` False keeps only the core methods (joint training,
    both COSEE methods) plus the baseline that did best on movie-reviews' validation split; ``task`` 'regression'
    runs ``REGRESSION_METHODS`` and reads them with the regression signals; ``methods`` names them outright.
    ``dataset`` is the dataset plugin (default: the study's name) and ``backbone`` the encoder;
    ``max_eval_samples`` cuts the validation and test splits (training and evaluation alike) to their first N."""

    epochs: int
    max_train_samples: int | None
    baselines: bool = True
    task: str = "classification"
    methods: tuple[Method, ...] | None = None
    dataset: str | None = None
    backbone: str = "minilm-l6"
    max_eval_samples: int | None = None

    def flags(self) -> list[str]:
        flags = ["--epochs", str(self.epochs)]
        flags += ["--max-train-samples", str(self.max_train_samples)] if self.max_train_samples else []
        flags += ["--max-eval-samples", str(self.max_eval_samples)] if self.max_eval_samples else []
        return flags + (["--backbone", self.backbone] if self.backbone != "minilm-l6" else [])

    def describe(self) -> str:
        samples = "the full training split" if self.max_train_samples is None else \
            f"the first {self.max_train_samples:,} training samples"
        evaluation = "" if self.max_eval_samples is None else \
            f" (validation and test: their first {self.max_eval_samples:,} samples)"
        return f"{BACKBONE_NAMES.get(self.backbone, self.backbone)}, {samples}{evaluation}, {self.epochs} epochs"


BACKBONE_NAMES = {"minilm-l6": "MiniLM-L6", "mpnet-base": "all-mpnet-base-v2 (MPNet, 12 layers)"}
# 12 layers cost about 8 times MiniLM-L6's FLOPs per sample: 2,000 samples and 2 epochs, and no baseline on snli,
# keep the 12-layer comparison (14 + 11 trainings) within three sittings; with snli's 9,824-pair validation and test
# splits whole, a training took 17.5 minutes, cut to 2,000 pairs each (twice movie-reviews' 1,000) about 9.7
# (bf16 on the 2-core Intel Xeon with AMX)
BUDGETS = {"movie-reviews": Budget(3, None), "snli": Budget(2, 10_000, baselines=False),
           "movie-reviews-rating": Budget(3, None, task="regression"),
           "movie-reviews-mpnet-base": Budget(2, 2000, methods=DEEP_METHODS, dataset="movie-reviews",
                                              backbone="mpnet-base"),
           "snli-mpnet-base": Budget(2, 2000, methods=DEEP_CORE, dataset="snli", backbone="mpnet-base",
                                      max_eval_samples=2000)}


def study_flags(name: str) -> str:
    """The ``compare.py`` flags that run the study ``name``."""
    budget = BUDGETS[name]
    backbone = f" --backbone {budget.backbone}" if budget.backbone != "minilm-l6" else ""
    return f"--dataset {budget.dataset or name}{backbone}"


def study(dataset: str, backbone: str | None) -> str:
    """The comparison's name for a dataset on a backbone (its result folder and ``BUDGETS`` key)."""
    return dataset if backbone in (None, "minilm-l6") else f"{dataset}-{backbone}"


@dataclass(frozen=True)
class Training:
    """One configuration of one method with one seed; its result file is ``<study>/<key>-seed<seed>.json``."""

    method: Method
    config: Config
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.config.key}-seed{self.seed}"


# ---------------------------------------------------------------------------------------------------------
# reading the result files and making the choices


def load_records(results: Path, dataset: str) -> dict[str, dict[str, Any]]:
    """Every result file of a dataset, by file stem."""
    folder = results / dataset
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def spans_all(evaluation: dict[str, Any], num_exits: int) -> bool:
    """Whether a curve covers the whole speed-up range 1x..Lx (a signal that cannot leave before a window of
    exits is full, say, covers only an easier part, and its AUC is not comparable)."""
    speedups = evaluation["curve"]["speedup"]
    return min(speedups) <= 1.01 and max(speedups) >= num_exits - 0.01


def mean(values: list[float]) -> float:
    return statistics.mean(values)


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def seeds_of(records: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The records of one configuration, by seed."""
    found = [r for r in records.values() if r["config"] == key]
    return sorted(found, key=lambda r: r["seed"])


def best_signal(runs: list[dict[str, Any]]) -> str:
    """The signal with the highest mean validation AUC over the runs, among those whose curves span 1x..Lx."""
    num_exits = len(runs[0]["per_exit_accuracy"]["validation"])
    eligible = [s for s in runs[0]["evaluations"]["validation"]
                if all(spans_all(r["evaluations"]["validation"][s], num_exits) for r in runs)]
    return max(eligible, key=lambda s: mean([r["evaluations"]["validation"][s]["auc"] for r in runs]))


def validation_auc(runs: list[dict[str, Any]]) -> float:
    """The configuration's validation AUC with its best signal (mean over the runs)."""
    signal = best_signal(runs)
    return mean([r["evaluations"]["validation"][signal]["auc"] for r in runs])


def chosen_config(method: Method, records: dict[str, dict[str, Any]]) -> Config | None:
    """The method's configuration with the best seed-1 validation AUC, once every candidate has its seed-1 file."""
    firsts = {c.key: [r for r in seeds_of(records, c.key) if r["seed"] == 1] for c in method.configs}
    if not all(firsts.values()):
        return None
    return max(method.configs, key=lambda c: validation_auc(firsts[c.key]))


def best_baseline(records: dict[str, dict[str, Any]]) -> Method | None:
    """The baseline with the best validation AUC (its chosen configuration, mean over its seeds), once known."""
    scored = []
    for method in (m for m in METHODS if m.name in BASELINES):
        config = chosen_config(method, records)
        if config is None:
            return None
        scored.append((validation_auc(seeds_of(records, config.key)), method))
    return max(scored, key=lambda pair: pair[0])[1]


def methods_for(dataset: str, results: Path) -> list[Method]:
    """The methods a study carries (see ``Budget.methods``, ``Budget.baselines`` and ``Budget.task``)."""
    if BUDGETS[dataset].methods is not None:
        return list(BUDGETS[dataset].methods)
    if BUDGETS[dataset].task == "regression":
        return list(REGRESSION_METHODS)
    if BUDGETS[dataset].baselines:
        return list(METHODS)
    core = [m for m in METHODS if m.name == JOINT or m.name in COSEE_METHODS]
    extra = best_baseline(load_records(results, "movie-reviews"))
    return core + ([extra] if extra else [])


def planned(dataset: str, results: Path, seeds: tuple[int, ...] = (1, 2, 3)) -> list[Training]:
    """Every training the comparison needs that can be named now, method by method: each configuration with
    seed 1, then the chosen configuration with the other seeds (known once the method's seed-1 runs are done)."""
    records = load_records(results, dataset)
    runs = []
    for method in methods_for(dataset, results):
        runs += [Training(method, c, seeds[0]) for c in method.configs]
        config = chosen_config(method, records)
        if config is not None:
            runs += [Training(method, config, seed) for seed in seeds[1:]]
    return runs


def missing(dataset: str, results: Path) -> list[Training]:
    """The planned trainings without a result file."""
    return [t for t in planned(dataset, results) if not (results / dataset / f"{t.stem}.json").exists()]


# ---------------------------------------------------------------------------------------------------------
# running one training


def command(*args: str) -> list[str]:
    """``adaptive-exit ARGS`` as a subprocess command line of this Python."""
    return [sys.executable, "-m", "adaptive_exit", *args]


def compact(result: Any) -> dict[str, Any]:
    """An evaluation result with its curve as columns (threshold, speed-up, metric), rounded."""
    return {"auc": result.auc, "metric_at": result.metric_at, "curve": {
        "threshold": [round(p.threshold, 6) for p in result.curve],
        "speedup": [round(p.speedup, 5) for p in result.curve],
        "metric": [round(p.metric, 5) for p in result.curve]}}


def evaluate_every_signal(model_dir: Path) -> tuple[dict[str, Any], dict[str, list[float]], float]:
    """Every signal of the model's task swept on validation and test (one all-exits pass per split, each cut as
    the training's validation was), the per-exit metric of each split, and the seconds it took."""
    import torch

    from adaptive_exit.config import DataConfig
    from adaptive_exit.data import load_task, tokenize
    from adaptive_exit.evaluation import split_outputs, sweep
    from adaptive_exit.model import MultiExitModel, load_signal_weights, signal_for
    from adaptive_exit.precision import Precision, default_device

    start = time.perf_counter()
    model = MultiExitModel.from_pretrained(model_dir)
    trained = model.config
    device = default_device()
    model.to(device)
    signals = EVAL_SIGNALS[trained.get("task", "classification")]
    names = list(signals) + [s for s in [trained["signal"]["name"]] if s not in signals]
    evaluations: dict[str, Any] = {}
    per_exit: dict[str, list[float]] = {}
    data = DataConfig.model_validate(trained["run"]["data"])
    task = load_task(data)
    tokenized = tokenize(task, model.tokenizer, data.max_length, SPLITS)
    for split in SPLITS:
        outputs, labels = split_outputs(model, tokenized[split], 64, device, Precision("auto", device))
        evaluations[split] = {}
        for name in names:
            own = name == trained["signal"]["name"]
            signal = signal_for(model, name, trained["signal"]["options"] if own else {})
            if own:
                load_signal_weights(signal, model_dir)
            with torch.no_grad():
                result = sweep(outputs, labels, signal.to(device).eval(), task.metric)
            evaluations[split][name] = compact(result)
            per_exit[split] = result.per_exit_metric
    return evaluations, per_exit, time.perf_counter() - start


def weight_shares(tracking_uri: str, experiment: str, model_dir: Path) -> dict[str, list[float]]:
    """COSEE's logged per-exit weight shares of the training that wrote ``model_dir`` (empty for others)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.search_experiments(filter_string=f"name = '{experiment}'")
    runs = client.search_runs([found[0].experiment_id],
                              f"tags.`adaptive_exit.output_dir` = '{model_dir.resolve()}'") if found else []
    if not runs:
        return {}
    keys = sorted(k for k in runs[0].data.metrics if k.startswith("cosee_weight/"))
    shares: dict[str, list[float]] = {}
    for key in keys:
        history = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
        shares["step"] = [m.step for m in history]
        shares[key.split("/", 1)[1]] = [round(m.value, 5) for m in history]
    return shares


def run_training(training: Training, dataset: str, results: Path, work: Path) -> dict[str, Any]:
    """Train, evaluate with every signal, and write the training's result file."""
    budget = BUDGETS[dataset]
    model_dir = work / dataset / training.stem
    subprocess.run(["rm", "-rf", str(model_dir)], check=True)
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "tracking.yaml"
    settings.write_text("tracking:\n  log_model: false\n")
    tracking_uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    experiment = f"compare-{dataset}"
    flags = [*training.config.flags, "--dataset", budget.dataset or dataset, *budget.flags(), "--seed",
             str(training.seed)]
    start = time.perf_counter()
    done = subprocess.run(command("train", "--config", str(settings), *flags, "--experiment", experiment,
                                  "--output-dir", str(model_dir)),
                          capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"compare: {training.stem}: train failed:\n{done.stderr[-3000:]}")
    evaluations, per_exit, eval_seconds = evaluate_every_signal(model_dir)
    setup = next((line for line in done.stderr.splitlines() if "training on" in line), "")
    record = {"dataset": budget.dataset or dataset, "study": dataset, "backbone": budget.backbone,
              "method": training.method.name, "config": training.config.key,
              "train_flags": flags, "seed": training.seed,
              "budget": {"epochs": budget.epochs, "max_train_samples": budget.max_train_samples,
                         "max_eval_samples": budget.max_eval_samples},
              "setup": setup.removeprefix("adaptive-exit: "), "train_seconds": round(seconds, 1),
              "eval_seconds": round(eval_seconds, 1), "commit": commit(),
              "date": datetime.date.today().isoformat(), "machine": machine(), "per_exit_accuracy": per_exit,
              "weight_shares": weight_shares(tracking_uri, experiment, model_dir), "evaluations": evaluations}
    (results / dataset).mkdir(parents=True, exist_ok=True)
    (results / dataset / f"{training.stem}.json").write_text(json.dumps(record) + "\n")
    return record


def commit() -> str:
    """The checkout's commit, '-dirty' where tracked files changed."""
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def machine() -> str:
    """The machine in words: CPU (model, flags, native bf16 or not), cores, torch and its threads, accelerator."""
    import torch

    from adaptive_exit.precision import cpu_description, cpu_line

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = cpu_line(cpu_description()).removeprefix("CPU: ")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {cpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}")


def estimate(results: Path, name: str, count: int) -> str:
    """Minutes for ``count`` more trainings at the mean duration of the study's finished ones or, before its
    first, of the finished ones of a study on the same encoder; '' where none has finished."""
    same = [name] + [n for n in BUDGETS if n != name and BUDGETS[n].backbone == BUDGETS[name].backbone]
    for source in same:
        if records := load_records(results, source):
            minutes = count * mean([r["train_seconds"] + r["eval_seconds"] for r in records.values()]) / 60
            return f", about {minutes:.0f} minutes at the mean of {source}'s trainings so far"
    return ""


# ---------------------------------------------------------------------------------------------------------
# the results section


def cell(values: list[float | None]) -> str:
    """'mean ± sample std' of the values, 'n/a' where a curve did not reach the mark."""
    if not values or any(v is None for v in values):
        return "n/a"
    return f"{mean(values):.4f} ± {std(values):.4f}"


def method_rows(dataset: str, results: Path) -> list[dict[str, Any]]:
    """One row per method with its chosen configuration and signal: the test numbers over its seeds."""
    records = load_records(results, dataset)
    out = []
    for method in methods_for(dataset, results):
        config = chosen_config(method, records)
        if config is None:
            continue
        runs = seeds_of(records, config.key)
        signal = best_signal(runs)
        test = [r["evaluations"]["test"][signal] for r in runs]
        out.append({"method": method.name, "config": config.key, "signal": signal, "runs": runs,
                    "seeds": [r["seed"] for r in runs], "auc": [t["auc"] for t in test],
                    "at": {m: [t["metric_at"][m] for t in test] for m in test[0]["metric_at"]},
                    "validation_auc": [r["evaluations"]["validation"][signal]["auc"] for r in runs],
                    "per_exit": [r["per_exit_accuracy"]["test"] for r in runs]})
    return out


def cosee_and_joint(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The better COSEE method's row (by validation AUC) and joint training's row, or None while one is missing."""
    joint = next((r for r in rows if r["method"] == JOINT), None)
    cosee = [r for r in rows if r["method"] in COSEE_METHODS]
    if joint is None or not cosee:
        return None
    return max(cosee, key=lambda r: mean(r["validation_auc"])), joint


def verdict(rows: list[dict[str, Any]], word: str = "accuracy") -> list[str]:
    """Whether the better COSEE method (by validation) beats joint training on test, as the issue asks:
    in AUC and at 2x and 3x, by more than the larger of the two standard deviations."""
    pair = cosee_and_joint(rows)
    if pair is None:
        return []
    best, joint = pair
    if len(best["seeds"]) < 3 or len(joint["seeds"]) < 3:
        return [f"- Not decided yet: {best['method']} ({best['config']}) has seeds {best['seeds']}, "
                f"joint training {joint['seeds']}; the verdict needs 3 seeds of each."]
    lines, wins = [], 0
    for label, a, b in (("AUC", best["auc"], joint["auc"]), (f"{word} at 2x", best["at"]["2"], joint["at"]["2"]),
                        (f"{word} at 3x", best["at"]["3"], joint["at"]["3"])):
        if None in a or None in b:
            lines.append(f"  - {label}: n/a (a curve does not reach it)")
            continue
        gap, spread = mean(a) - mean(b), max(std(a), std(b))
        wins += gap > spread
        word = "ahead by more than" if gap > spread else "behind by more than" if -gap > spread else "within"
        lines.append(f"  - {label}: {mean(a):.4f} against {mean(b):.4f}, {gap:+.4f}: {word} the larger "
                     f"standard deviation ({spread:.4f})")
    head = (f"- **{best['method']}** (`{best['config']}`, read with {best['signal']}), the better COSEE method on "
            f"validation, against **joint training** (read with {joint['signal']}), test, mean of seeds 1-3: "
            + ("it beats joint training on all three counts." if wins == 3 else
               f"it does not beat joint training ({wins} of 3 counts ahead by more than a standard deviation)."))
    return [head, *lines]


def matrix(dataset: str, results: Path) -> list[str]:
    """Every configuration against every signal: validation AUC of seed 1 (where choices are made) and mean
    test AUC over the seeds found; † marks curves that do not span 1x..Lx (not eligible to be chosen)."""
    records = load_records(results, dataset)
    configs = [c for m in methods_for(dataset, results) for c in m.configs if seeds_of(records, c.key)]
    if not configs:
        return []
    signals = list(seeds_of(records, configs[0].key)[0]["evaluations"]["test"])
    lines = ["| configuration | seeds | " + " | ".join(signals) + " |", "|---|---|" + "---|" * len(signals)]
    for config in configs:
        runs = seeds_of(records, config.key)
        first = runs[0]
        num_exits = len(first["per_exit_accuracy"]["test"])
        chosen = best_signal(runs)
        cells = []
        for signal in signals:
            if signal not in first["evaluations"]["test"]:
                cells.append("")
                continue
            val = first["evaluations"]["validation"][signal]
            test = mean([r["evaluations"]["test"][signal]["auc"] for r in runs])
            text = f"{val['auc']:.3f} / {test:.3f}" + ("" if spans_all(val, num_exits) else " †")
            cells.append(f"**{text}**" if signal == chosen else text)
        lines.append(f"| `{config.key}` | {','.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    return lines


def comparison_of(rows: list[dict[str, Any]], title: str, word: str = "accuracy") -> Any:
    """The chosen rows' test curves as a ``Comparison`` (its plot: the mean over seeds, with the band between the
    lowest and highest seed)."""
    from adaptive_exit import ChildResult, Comparison, CurvePoint, EvaluationResult

    comparison = Comparison(word, title=title)
    for row in rows:
        for run in row["runs"]:
            evaluation = run["evaluations"]["test"][row["signal"]]
            curve = [CurvePoint(t, s, m, []) for t, s, m in zip(*evaluation["curve"].values())]
            result = EvaluationResult(row["signal"], word, 0, curve, run["per_exit_accuracy"]["test"],
                                      evaluation["auc"], evaluation["metric_at"])
            comparison.children.append(ChildResult(run["config"], f"{row['method']} ({row['signal']})",
                                                   run["seed"], result))
    return comparison


def depth_comparison(deep: str, results: Path, figures: Path) -> list[str]:
    """For a study on a deeper encoder: the better COSEE method's test gap to joint training on MiniLM-L6 and on
    it, and both depths' curves side by side (written to ``figures``)."""
    studies = [s for s in (BUDGETS[deep].dataset, deep) if method_rows(s, results)]
    lines = ["| encoder | COSEE method (configuration) | seeds: COSEE / joint | AUC gap | "
             "accuracy gap @2x | accuracy gap @3x |", "|---|---|---|---|---|---|"]
    for name in studies:
        pair = cosee_and_joint(method_rows(name, results))
        if pair is None:
            continue
        best, joint = pair
        gaps = []
        for a, b in ((best["auc"], joint["auc"]), (best["at"]["2"], joint["at"]["2"]), (best["at"]["3"], joint["at"]["3"])):
            gaps.append("n/a" if None in a or None in b else
                        f"{mean(a) - mean(b):+.4f} (std {max(std(a), std(b)):.4f})")
        lines.append(f"| {BACKBONE_NAMES[BUDGETS[name].backbone]} | {best['method']} (`{best['config']}`) | "
                     f"{','.join(map(str, best['seeds']))} / {','.join(map(str, joint['seeds']))} | " + " | ".join(gaps)
                     + " |")
    if len(lines) == 2:
        return []
    lines = ["", "COSEE against joint training at both depths (test, mean over the seeds found; the gap is COSEE's "
             "mean minus joint training's, beside the larger of the two standard deviations):", "", *lines]
    if len(studies) == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
        for axis, name in zip(axes, studies):
            title = f"{BACKBONE_NAMES[BUDGETS[name].backbone]}: test accuracy against layer speed-up"
            comparison_of(method_rows(name, results), title).draw(axis)
        figure.tight_layout()
        path = figures / f"depths-{BUDGETS[deep].dataset}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        lines += ["", f"![6 and 12 layers side by side on {BUDGETS[deep].dataset}]({path.name})"]
    return lines


def plot_weight_shares(records: list[dict[str, Any]], path: Path) -> bool:
    """Each COSEE training's per-exit share of the cross-entropy weight over training (seed 1), side by side."""
    shown = [r for r in records if r["weight_shares"]]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4), sharey=True, squeeze=False)
    for axis, record in zip(axes[0], shown):
        shares = record["weight_shares"]
        exits = sorted((k for k in shares if k != "step"), key=lambda k: int(k.split("_")[1]))
        axis.stackplot(shares["step"], *[shares[k] for k in exits], labels=[k.replace("_", " ") for k in exits])
        axis.set_title(record["config"], fontsize=8)
        axis.set_xlabel("step")
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of the cross-entropy weight")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def section(dataset: str, results: Path, figures: Path) -> str:
    """The dataset's section of docs/RESULTS.md, from its result files alone (figures written to ``figures``)."""
    records = load_records(results, dataset)
    budget = BUDGETS[dataset]
    word = METRIC_WORD[budget.task]
    short = "acc" if budget.task == "classification" else word
    left = missing(dataset, results)
    table = method_rows(dataset, results)
    lines = [f"## {dataset}", ""]
    if not records:
        return "\n".join(lines + ["No training has finished yet.", ""])
    commits = ", ".join(sorted({f"`{r['commit']}`" for r in records.values()}))
    dates = ", ".join(sorted({r["date"] for r in records.values()}))
    hours = sum(r["train_seconds"] + r["eval_seconds"] for r in records.values()) / 3600
    first = next(iter(records.values()))
    lines += [
        f"`python benchmarks/compare.py {study_flags(dataset)}` on {dates} at commit(s) {commits}; "
        f"{first['machine']}; {len(records)} training(s), {hours:.1f} hours. Budget for every training: "
        f"{budget.describe()}, batch size 32, max length 64, the engine's defaults otherwise. "
        f"Result files: `benchmarks/results/{dataset}/`.",
        "",
    ]
    if left:
        undecided = any(chosen_config(m, records) is None for m in methods_for(dataset, results))
        more = " (then seeds 2 and 3 of the methods still choosing a configuration)" if undecided else ""
        lines += [f"**Incomplete:** {len(left)} of the trainings named so far have no result yet{more}: "
                  + ", ".join(f"`{t.stem}`" for t in left) + ". Rows with fewer than 3 seeds are not final.", ""]
    lines += ["Each method's configuration and the signal it is read with are chosen on validation (seed 1 for "
              "the configuration, the mean over seeds for the signal, among signals whose curves span 1x..Lx). "
              "Test numbers: mean ± sample standard deviation over the seeds.", "",
              f"| method | configuration | signal | seeds | test AUC | {short} @1.5x | {short} @2x | {short} @3x | "
              f"{short} @4x | validation AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['method']} | `{row['config']}` | {row['signal']} | "
                     f"{','.join(map(str, row['seeds']))} | {cell(row['auc'])} | "
                     + " | ".join(cell(row["at"][m]) for m in ("1.5", "2", "3", "4"))
                     + f" | {cell(row['validation_auc'])} |")
    if table:
        num_exits = len(table[0]["per_exit"][0])
        lines += ["", f"Per-exit test {word} of the chosen configurations (mean over seeds):", "",
                  "| method | " + " | ".join(f"exit {k + 1}" for k in range(num_exits)) + " |",
                  "|---|" + "---|" * num_exits]
        for row in table:
            lines.append(f"| {row['method']} | " + " | ".join(
                f"{mean([p[k] for p in row['per_exit']]):.4f}" for k in range(num_exits)) + " |")
        curves = figures / f"results-{dataset}.png"
        comparison_of(table, f"{dataset}: test {word} against layer speed-up", word).plot(curves)
        lines += ["", f"![test {word} against layer speed-up on {dataset}]({curves.name})"]
    found = verdict(table, word)
    if found:
        lines += ["", f"Verdict (the bar: ahead of joint training in test AUC and in {word} at 2x and at 3x, each by "
                  "more than the larger of the two standard deviations):", "", *found]
    lines += ["", "Every configuration read with every signal: validation AUC of seed 1 / test AUC, mean over "
              "the seeds found; the row's chosen signal in bold; † a curve that does not span 1x..Lx, whose AUC "
              "averages an easier range and is never chosen.", "", *matrix(dataset, results)]
    cosee = [records[f"{c.key}-seed1"] for m in methods_for(dataset, results) if m.name in COSEE_METHODS
             for c in m.configs if f"{c.key}-seed1" in records]
    shares = figures / f"cosee-weights-{dataset}.png"
    if plot_weight_shares(cosee, shares):
        lines += ["", "COSEE's per-exit share of the cross-entropy weight during training (seed 1; the paper's "
                  "method and the departures):", "", f"![COSEE weight shares on {dataset}]({shares.name})"]
    if budget.backbone != "minilm-l6":
        lines += depth_comparison(dataset, results, figures)
    return "\n".join(lines) + "\n"


def update_results(path: Path, name: str, text: str) -> None:
    """Put a section into the results file between its markers, replacing an earlier one."""
    begin, end = f"<!-- compare:{name} -->", f"<!-- /compare:{name} -->"
    current = path.read_text() if path.exists() else (
        "# Results\n\nWritten by the scripts in `benchmarks/`; each section says the command that produced it.\n")
    block = f"{begin}\n{text}{end}"
    if begin in current:
        current = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(current)


def render(results: Path, results_file: Path, datasets: list[str]) -> None:
    """Write each dataset's section (and figures beside the results file) from the result files."""
    results_file.parent.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        update_results(results_file, dataset, section(dataset, results, results_file.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted({b.dataset or name for name, b in BUDGETS.items()}),
                        default="movie-reviews", help="dataset to run (default: movie-reviews)")
    parser.add_argument("--backbone", choices=sorted(BACKBONE_NAMES), default="minilm-l6",
                        help="encoder (default: minilm-l6); results go to <results>/<dataset>-<backbone> for another")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                        help="folder of the result files, one subfolder per study (default: benchmarks/results)")
    parser.add_argument("--work", default="outputs/compare", help="where the models and the MLflow store go")
    parser.add_argument("--max-trainings", type=int, help="stop after this many trainings (size a sitting)")
    parser.add_argument("--plan", action="store_true", help="only list the missing trainings and a time estimate")
    parser.add_argument("--render-from", metavar="DIR", help="train nothing: write the results of every study "
                                                             "from the result files in DIR")
    parser.add_argument("--results-file", default=str(ROOT / "docs" / "RESULTS.md"), help="file to write")
    args = parser.parse_args(argv)
    results_file = Path(args.results_file)
    if args.render_from:
        results = Path(args.render_from)
        render(results, results_file, [d for d in BUDGETS if (results / d).is_dir()])
        print(f"wrote {results_file}")
        return 0
    results = Path(args.results)
    name = study(args.dataset, args.backbone)
    if name not in BUDGETS:
        parser.error(f"no comparison of {args.dataset} on {args.backbone} is defined; the studies: "
                     + ", ".join(study_flags(n) for n in BUDGETS))
    if args.plan:
        left = missing(name, results)
        for training in left:
            print(f"{training.stem}  ({training.method.name}): {' '.join(training.config.flags)}")
        print(f"{len(left)} trainings named so far are missing{estimate(results, name, len(left))}")
        return 0
    from adaptive_exit.cli import quiet_libraries

    quiet_libraries()
    done = 0
    while (left := missing(name, results)) and (args.max_trainings is None or done < args.max_trainings):
        training = left[0]
        print(f"[{time.strftime('%H:%M')}] {training.stem} ({training.method.name}); {len(left)} named trainings "
              f"missing", flush=True)
        record = run_training(training, name, results, Path(args.work))
        done += 1
        print(f"  train {record['train_seconds']:.0f} s, evaluation {record['eval_seconds']:.0f} s, final-exit test "
              f"{METRIC_WORD[BUDGETS[name].task]} {record['per_exit_accuracy']['test'][-1]:.4f}", flush=True)
    render(results, results_file, [name])
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
