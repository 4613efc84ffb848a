"""The ``adaptive-exit`` command line: train, sweep, evaluate, calibrate, predict, benchmark, benchmark-train,
check-backbone, plugins."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator


from .config import flag_name
from .errors import UsageError
from .lifecycle import Terminated, sigterm_received, terminate_on_sigterm
from .option_flags import (KIND_OF, SECTIONS, add_plugin_option_flags, option_flag, option_label,
                           option_targets, route_options)

if TYPE_CHECKING:
    from .sweeps import SweepChild

CONFIG_SECTIONS = ("model", "data", "train")
SIGNAL_COMMANDS = ("train", "sweep", "evaluate", "calibrate", "predict", "benchmark")  # they take plugin options
DEBUG_HELP = "show the traceback behind an error (also: ADAPTIVE_EXIT_DEBUG=1)"
MLFLOW_UI_HINT = "Compare runs: run `mlflow ui` in this directory and open http://127.0.0.1:5000"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from .config import DataConfig, ModelConfig, TrainConfig

    for section, model in zip(CONFIG_SECTIONS, (ModelConfig, DataConfig, TrainConfig)):
        group = parser.add_argument_group(f"{section} (config section '{section}:')")
        for field, info in model.model_fields.items():
            help_text = f"{info.description} (default: {info.default})"
            if info.annotation is bool:
                group.add_argument(flag_name(field), dest=f"{section}.{field}", default=argparse.SUPPRESS,
                                   action=argparse.BooleanOptionalAction, help=help_text)
            else:
                group.add_argument(flag_name(field), dest=f"{section}.{field}", default=argparse.SUPPRESS,
                                   metavar="VALUE", help=help_text)


def build_run_config(args: argparse.Namespace) -> Any:
    """The RunConfig from ``--config`` (if any) with the flags put over it."""
    from .config import RunConfig, build_config, deep_merge, read_yaml

    values = vars(args)
    config = RunConfig().model_dump()
    if values.get("config"):
        config = build_config(deep_merge(config, read_yaml(values["config"]))).model_dump()
    for key, value in values.items():
        if "." in key:
            section, field = key.split(".", 1)
            config.setdefault(section, {})[field] = value
    for key in ("signal", "weighting"):
        if values.get(key) and values[key] != config.get(key, {}).get("name"):
            config[key] = {"name": values[key], "options": {}}
    if values.get("output_dir"):
        config["output_dir"] = values["output_dir"]
    if values.get("experiment"):
        config.setdefault("tracking", {})["experiment"] = values["experiment"]
    if values.get("no_track"):
        config.setdefault("tracking", {})["enabled"] = False
    if isinstance(config.get("signal"), dict) and isinstance(config.get("weighting"), dict):
        _put_options(values, config)
    return build_config(config)


def _put_options(values: dict[str, Any], config: dict[str, Any]) -> None:
    """Put the plugin options given as flags into the config's signal and weighting, checked against them."""
    from .config import validate_options
    from .plugins import lookup

    chosen = {section: config[section]["name"] for section in SECTIONS.values()}
    options, flags = route_options(values, chosen)
    for section, given in options.items():
        merged = config[section].setdefault("options", {})
        if not isinstance(merged, dict):
            return  # build_config names the malformed section
        merged.update(given)
        config[section]["options"] = validate_options(lookup(KIND_OF[section], chosen[section]).cls.Options, merged,
                                                      f"{section}.options", flags[section]).model_dump()


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    config = build_run_config(args)
    if args.resume and not config.output_dir:
        raise UsageError("--resume needs the --output-dir of the training to continue")
    result, output_dir = train(config, resume=args.resume)
    if output_dir is not None:
        print(result.table())
        print(f"\nModel saved to {output_dir}")
        if config.tracking.enabled:
            print(MLFLOW_UI_HINT)
    return 0


def sweep_children(args: argparse.Namespace) -> tuple[list[SweepChild], dict[str, list[str]], str, str]:
    """The sweep's child configurations (duplicates removed), its grid by field name, experiment and output directory."""
    import datetime
    import re

    from .sweeps import SweepChild, expand_grid
    from .training import resolve_options

    values = vars(args)
    grid = {key: [v.strip() for v in value.split(",") if v.strip()] for key, value in values.items()
            if isinstance(value, str) and "," in value
            and (key in ("signal", "weighting") or "." in key or key.startswith("option:"))}
    grid = dict(sorted(grid.items(), key=lambda item: {"weighting": 0, "signal": 1}.get(item[0], 2)))
    label = {key: option_label(key) if key.startswith("option:") else key.rsplit(".", 1)[-1] for key in grid}
    first = {**values, **{k: v[0] for k, v in grid.items()}}
    base = build_run_config(argparse.Namespace(**{k: v for k, v in first.items() if not k.startswith("option:")}))
    experiment = values.get("experiment") or base.tracking.experiment or (
        base.data.dataset if "data.dataset" not in grid else "sweep")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = values.get("output_dir") or f"outputs/sweep-{stamp}"
    if values.get("resume") and not values.get("output_dir"):
        raise UsageError("--resume needs the --output-dir of the sweep to continue")
    if not values.get("resume") and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise UsageError(f"output directory '{output_dir}' exists and is not empty; pass another --output-dir (or "
                         f"--resume to continue the sweep in it)")
    children, seen, used = [], set(), set()
    for combo in expand_grid(grid):
        chosen = {**values, **combo}
        plugins = {"signal": chosen.get("signal") or base.signal.name,
                   "weighting": chosen.get("weighting") or base.weighting.name}
        applies = {k: v for k, v in combo.items() if not k.startswith("option:") or option_targets(k, plugins)}
        chosen = {k: v for k, v in chosen.items() if not k.startswith("option:") or option_targets(k, plugins)}
        used |= {k for k in chosen if k.startswith("option:")}
        name = " ".join(f"{label[k]}={v}" for k, v in applies.items()) or "base"
        group = " ".join(f"{label[k]}={v}" for k, v in applies.items() if k != "train.seed") or "base"
        chosen["output_dir"] = str(Path(output_dir) / re.sub(r"[^A-Za-z0-9_.=-]+", "_", name))
        chosen["experiment"] = experiment
        config = resolve_options(build_run_config(argparse.Namespace(**chosen)))
        key = json.dumps(config.model_dump(exclude={"output_dir"}), sort_keys=True)
        if key not in seen:
            seen.add(key)
            children.append(SweepChild(name, group, config))
    unused = sorted(option_flag(k) for k in values if k.startswith("option:") and k not in used)
    if unused:
        raise UsageError(f"{', '.join(unused)} applies to none of the sweep's signals and weightings")
    return children, {label[key]: value for key, value in grid.items()}, experiment, output_dir


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeps import PartialSweep, run_sweep

    children, grid, experiment, output_dir = sweep_children(args)
    print(f"sweep: {len(children)} configuration(s): " + "; ".join(c.name for c in children), file=sys.stderr)
    try:
        comparison = run_sweep(children, experiment, output_dir, tracking=not args.no_track, grid=grid,
                               title=f"sweep over {', '.join(grid) or 'one configuration'}", resume=args.resume)
    except PartialSweep as partial:
        print(partial.comparison.table())
        print(f"adaptive-exit: error: {partial}; the comparison of all of them is in {output_dir}", file=sys.stderr)
        return 1
    print(comparison.table())
    print(f"\nComparison (comparison.csv, comparison.json, comparison.png) and models saved to {output_dir}")
    if not args.no_track:
        print(MLFLOW_UI_HINT)
    return 0


def _saved_model_signal_options(args: argparse.Namespace) -> dict[str, Any]:
    """The signal options given as flags to a command on a saved model, checked against the signal it will use
    (``--signal``, else the model's) together with the options the model keeps for it."""
    from .config import validate_options
    from .model import chosen_signal_options, read_model_config
    from .plugins import lookup

    trained = read_model_config(args.model_dir)["signal"]
    name = args.signal or trained["name"]
    options, flags = route_options(vars(args), {"signal": name})
    validate_options(lookup("signals", name).cls.Options, chosen_signal_options(trained, name, options["signal"]),
                     "signal.options", flags["signal"])
    return options["signal"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model_dir

    result = evaluate_model_dir(args.model_dir, signal=args.signal, signal_options=_saved_model_signal_options(args),
                                dataset=args.dataset, split=args.split, thresholds=args.thresholds,
                                max_samples=args.max_eval_samples, batch_size=args.batch_size,
                                track=not args.no_track, precision=args.precision, check_signal=args.check_signal,
                                delta=args.delta)
    if args.check_signal:
        print(f"adaptive-exit: early-exit check passed: real early exit agrees with the sweep for all "
              f"{result.num_samples} samples", file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate_model_dir

    texts = _read_inputs(args.input) if args.input is not None else None
    stored = calibrate_model_dir(args.model_dir, target_speedup=args.target_speedup, max_drop=args.max_drop,
                                 signal=args.signal, signal_options=_saved_model_signal_options(args),
                                 dataset=args.dataset, split=args.split, max_samples=args.max_eval_samples,
                                 track=not args.no_track, precision=args.precision, max_risk=args.max_risk,
                                 delta=args.delta, risk=args.risk, texts=texts, input_name=args.input)
    if args.json:
        print(json.dumps(stored, indent=2))
        return 0
    print(f"threshold {stored['threshold']:.6g} for signal {stored['signal']}: layer speed-up {stored['speedup']:.2f}x"
          + (f", {stored['metric_name']} {stored['metric']:.4f} (full model {stored['full_metric']:.4f})"
             if "metric" in stored else "") + f" on {stored['split']}; stored in {args.model_dir}")
    if args.max_risk is not None:
        print(f"certified: {stored['risk']} risk at most {stored['max_risk']:g} points with probability "
              f"{1 - stored['delta']:g} (upper bound {100 * stored['certified_bound']:.2f} points; "
              f"{100 * stored['empirical_risk']:.2f} on these {stored['samples']} samples), if the data served later "
              f"are exchangeable with them")
    return 0


def _read_inputs(source: str) -> list[Any]:
    """Texts from a file or standard input ('-'): one per line, or JSON lines."""
    name = "standard input" if source == "-" else f"input file '{source}'"
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{name} does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name} is not UTF-8 text (byte {exc.start} is not); convert it to UTF-8") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines or not all(line.lstrip().startswith("{") for _, line in lines):
        return [line for _, line in lines]
    rows = []
    for number, line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name} looks like JSON lines but line {number} is not valid JSON ({exc.msg}); "
                             f"nothing was predicted") from None
    return rows


@contextlib.contextmanager
def _output(target: str) -> Iterator[Any]:
    """Standard output ('-'), or the file ``target`` written whole: a temporary file beside it, opened before any
    work (so a path that cannot be written fails first), renamed over it once every answer is in it."""
    if target == "-":
        yield sys.stdout
        return
    temporary = Path(target).with_name(f".{Path(target).name}.partial")
    try:
        handle = open(temporary, "w")
    except OSError as exc:
        raise UsageError(f"cannot write --output '{target}' ({exc.strerror}); create its folder or pass another "
                         f"file") from None
    try:
        with handle:
            yield handle
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def cmd_predict(args: argparse.Namespace) -> int:
    from .model import MultiExitModel
    from .precision import default_device

    options = _saved_model_signal_options(args)
    texts = _read_inputs(args.input)
    with _output(args.output) as output:
        model = MultiExitModel.from_pretrained(args.model_dir).to(default_device())
        answers = model.predict(texts, threshold=args.threshold, batch_size=args.batch_size, signal=args.signal,
                                signal_options=options, precision=args.precision)
        for answer in answers:
            output.write(json.dumps(answer, allow_nan=False) + "\n")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_model_dir, format_report

    report = benchmark_model_dir(args.model_dir, threshold=args.threshold, batch_sizes=tuple(args.batch_sizes),
                                 repeats=args.repeats, max_samples=args.max_eval_samples, split=args.split,
                                 signal=args.signal, signal_options=_saved_model_signal_options(args),
                                 precision=args.precision)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_benchmark_train(args: argparse.Namespace) -> int:
    from .throughput import benchmark_training, format_training_report

    report = benchmark_training(backbone=args.backbone, dataset=args.dataset, batch_size=args.batch_size,
                                max_length=args.max_length, max_steps=args.max_steps, repeats=args.repeats,
                                warmup=args.warmup, num_layers=args.num_layers, precision=args.precision)
    print(json.dumps(report, indent=2) if args.json else format_training_report(report))
    return 0


def cmd_check_backbone(args: argparse.Namespace) -> int:
    from .encoder_calls import fidelity_report, load_encoder
    from .fidelity import TOLERANCE

    try:
        encoder = load_encoder(args.backbone_type, args.source, args.num_layers, check=False)
        report = fidelity_report(encoder)
    except UsageError as exc:
        if not args.json:
            raise
        print(json.dumps({"ok": False, "max_abs_diff": None, "per_layer": [], "architecture": None,
                          "num_layers": None, "problem": str(exc)}, indent=2))
        return 2
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.ok else 2
    print(f"backbone '{args.source}': {report.architecture}, {report.num_layers} layers, through "
          f"{type(encoder).__module__}.{type(encoder).__name__}")
    if report.per_layer:
        print("layer  largest |difference| from its own forward (real tokens of the probe sentences)")
        for index, diff in enumerate(report.per_layer, start=1):
            print(f"{index:>5}  {diff:.3g}")
    else:
        print("no own forward to compare with (the encoder's own_forward gives None)")
    print(f"a probe sentence alone against the same sentence in a padded batch: {report.alone:.3g}"
          + (f" (its own forward: {report.own_alone:.3g})" if report.per_layer else ""))
    if report.ok:
        print(f"OK: run one layer at a time it computes what its own forward computes (tolerance {TOLERANCE:g} of "
              f"the largest state)")
        return 0
    print(f"refused: {report.problem}")
    return 2


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import KINDS, scan, source

    found = scan()
    listing: dict[str, list[dict[str, Any]]] = {
        kind: [{"name": e.name, "plugin": e.plugin, "version": e.version,
                "description": (e.cls.__doc__ or "").strip().splitlines()[0] if e.cls.__doc__ else "",
                **({"tasks": list(e.cls.tasks), "exit_when": e.cls.exit_when} if kind == "signals" else {})}
               for e in found.registries[kind].values()] for kind in KINDS}
    listing["broken"] = [{"plugin": b.plugin, "distribution": b.distribution, "version": b.version,
                          "problem": b.problem} for b in found.broken]
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for kind in KINDS:
        print(f"{kind}:")
        for item in listing[kind]:
            tasks = (f"  [{', '.join(item['tasks'])}; exit when {item['exit_when']} threshold]" if "tasks" in item
                     else "")
            print(f"  {item['name']:<20} {item['plugin']} {item['version']}{tasks}  {item['description']}")
    if found.broken:
        print("broken:")
        for broken in found.broken:
            print(f"  {broken.plugin} ({source(broken.distribution, broken.version)}): {broken.problem}")
    return 0


def _add_precision_arg(parser: argparse.ArgumentParser) -> None:
    from .config import TrainConfig

    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help=f"{TrainConfig.model_fields['precision'].description} (default: auto)")


def _add_saved_model_args(parser: argparse.ArgumentParser, json_help: str, dataset: bool = True,
                          track: bool = True) -> None:
    """The arguments of commands that read a saved model and a split of its data."""
    parser.add_argument("model_dir", help="a directory written by `train`")
    parser.add_argument("--signal", help="exit signal (default: the one the model was trained with)")
    if dataset:
        parser.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    parser.add_argument("--split", choices=("validation", "test"), default="validation", help="split (default: validation)")
    parser.add_argument("--max-eval-samples", type=int, metavar="N", help="use only the first N samples")
    parser.add_argument("--json", action="store_true", help=json_help)
    _add_precision_arg(parser)
    if track:
        parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `train` (and of `sweep`, where each may hold a comma-separated list)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with sections model, data, train, signal, "
                                                          "weighting, tracking, output_dir; flags override it")
    parser.add_argument("--signal", help="exit signal (default: entropy)")
    parser.add_argument("--weighting", help="training weighting scheme (default: uniform)")
    parser.add_argument("--output-dir", help="where to save the model (default: outputs/<dataset>-<weighting>-"
                                             "<signal>-<time>; a sweep: outputs/sweep-<time>, a folder per child)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the dataset name)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    _add_config_flags(parser)


def make_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The argument parser; plugin option flags are added only for the command being run."""
    parser = argparse.ArgumentParser(
        prog="adaptive-exit",
        description="Train and evaluate early-exit transformer encoders. Signals, weightings, backbones and "
                    "datasets are plugins: `adaptive-exit plugins` lists them.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = next((a for a in argv if not a.startswith("-")), None)

    train = sub.add_parser("train", help="train a multi-exit model, evaluate it, save it, log it to MLflow",
                           description="Train a multi-exit model, run the threshold sweep on the evaluation split, "
                                       "save the model to --output-dir and log everything to MLflow.")
    _add_train_arguments(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the training whose checkpoints are in --output-dir, into the same MLflow run: "
                            "the same command with --resume added (only --epochs and --checkpoint-every may differ)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="train a grid of configurations as child runs of one MLflow parent run",
                           description="Train every combination of the comma-separated values given to any train "
                                       "flag (--weighting cosee,uniform --signal entropy,energy --seed 1,2,3 "
                                       "--beta0 1,10), each as a child run of one MLflow parent run. The parent holds "
                                       "the comparison: a table (comparison.csv, comparison.json) and one plot of "
                                       "every configuration's curve, averaged over seeds. A plugin option applies "
                                       "only to the children whose signal or weighting declares it.")
    _add_train_arguments(sweep)
    sweep.add_argument("--resume", action="store_true",
                       help="continue the sweep in --output-dir under its parent run: the same command with --resume "
                            "added; children whose model is saved are not trained again, those with checkpoints "
                            "resume, the rest train")
    sweep.set_defaults(func=cmd_sweep)

    evaluate = sub.add_parser("evaluate", help="threshold sweep of a saved model",
                              description="Run all exits once over a split, then report metric, layer speed-up and "
                                          "exit counts for every threshold of a grid.")
    _add_saved_model_args(evaluate, "print the results as JSON")
    evaluate.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                          help="thresholds to sweep (default: a grid over the signal's observed range)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    evaluate.add_argument("--delta", type=float, default=0.1, metavar="D",
                          help="in --json, each point carries the accuracy-drop and disagreement risks and their upper "
                               "confidence bounds at D (default: 0.1)")
    evaluate.add_argument("--check-signal", action="store_true",
                          help="also run real early exit at some of the sweep's thresholds and fail, naming the "
                               "signal, if any sample leaves at another layer than the sweep says")
    evaluate.set_defaults(func=cmd_evaluate)

    calibrate = sub.add_parser(
        "calibrate", help="pick and store the threshold: a target speed-up, a metric drop, or a certified risk",
        description="Pick a threshold on calibration data and store it in MODEL_DIR; predict, benchmark and the "
                    "MLflow model use it from then on. --max-risk E --delta D picks the fastest threshold whose risk "
                    "(the share of samples the early answer gets wrong where the full model is right, or with --risk "
                    "disagreement: where the two differ) is certified at most E points with probability at least 1 - D "
                    "over the draw of the calibration data, assuming that data and the data served later are "
                    "exchangeable (drawn alike, in no particular order). --target-speedup and --max-drop are point "
                    "estimates on the split: they promise nothing about new data.")
    _add_saved_model_args(calibrate, "print what was stored as JSON")
    goal = calibrate.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=float, metavar="X",
                      help="the best metric at a layer speed-up of at least X on the split (a point estimate)")
    goal.add_argument("--max-drop", type=float, metavar="D",
                      help="the fastest threshold within D points of the full model's metric on the split (0.5 = "
                           "0.005 accuracy); a point estimate: new data may lose more")
    goal.add_argument("--max-risk", type=float, metavar="E",
                      help="the fastest threshold whose risk is certified at most E points (1 = 0.01) with "
                           "probability 1 - --delta")
    calibrate.add_argument("--delta", type=float, default=0.1, metavar="D",
                           help="with --max-risk: the chance allowed that the certificate is wrong (default: 0.1)")
    calibrate.add_argument("--risk", choices=("accuracy-drop", "disagreement"), default="accuracy-drop",
                           help="with --max-risk: accuracy-drop (labelled data: wrong where the full model is right) "
                                "or disagreement (no labels needed: the early answer differs from the full model's) "
                                "(default: accuracy-drop)")
    calibrate.add_argument("--input", metavar="FILE",
                           help="with --max-risk --risk disagreement: calibrate on these unlabelled texts (as predict "
                                "reads them: a text per line, or JSON lines; '-' for standard input) instead of a split")
    calibrate.set_defaults(func=cmd_calibrate)

    predict = sub.add_parser("predict", help="early-exit predictions for texts, as JSON lines",
                             description="Read texts (one per line, or JSON lines with the dataset's text fields) and "
                                         "write one JSON line per text: label, label_id, probabilities, exit_layer "
                                         "(regression models: value, exit_layer).")
    predict.add_argument("model_dir", help="a directory written by `train`")
    predict.add_argument("--input", default="-", metavar="FILE", help="input file (default: standard input)")
    predict.add_argument("--output", default="-", metavar="FILE", help="output file (default: standard output)")
    predict.add_argument("--threshold", type=float, help="exit threshold (default: the calibrated one)")
    predict.add_argument("--signal", help="exit signal (default: the model's)")
    predict.add_argument("--batch-size", type=int, default=32,
                         help="samples per layer call: early exit refills each call from the texts waiting at that "
                              "layer (default: 32)")
    _add_precision_arg(predict)
    predict.set_defaults(func=cmd_predict)

    bench = sub.add_parser("benchmark", help="measured early-exit speed-up against the full model",
                           description="Time the full model and early exit on the same tokenized evaluation inputs "
                                       "(interleaved in short runs of batches, median of passes) at the stored "
                                       "threshold, and report layer speed-up, FLOPs ratio, measured speed-up and their "
                                       "ratio; "
                                       "early exit streams the batches as predict does (every layer call refilled "
                                       "to the batch size) and runs them one batch at a time.")
    _add_saved_model_args(bench, "print the report as JSON", dataset=False, track=False)
    bench.add_argument("--threshold", type=float, help="exit threshold (default: the calibrated one)")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B", help="(default: 1 32)")
    bench.add_argument("--repeats", type=int, default=5, help="timed passes over the inputs (default: 5)")
    bench.set_defaults(func=cmd_benchmark)

    bench_train = sub.add_parser(
        "benchmark-train", help="training speed for fp32/bf16 x random/length-grouped batches",
        description="Time real training steps (the uniform weighting) in fp32 and bf16, with random and with "
                    "length-grouped batches, interleaved after a warm-up, on batches that represent a whole epoch; "
                    "report samples per second, padded and real tokens per second, and each configuration's "
                    "ratio to fp32 with random batches. On a CPU without native bf16 the bf16 configurations are "
                    "skipped (--precision bf16 times them, emulated).")
    bench_train.add_argument("--backbone", default="minilm-l6", help="backbone (default: minilm-l6)")
    bench_train.add_argument("--num-layers", type=int, metavar="N", help="keep only the first N layers")
    bench_train.add_argument("--dataset", default="movie-reviews", help="dataset (default: movie-reviews)")
    bench_train.add_argument("--batch-size", type=int, default=32, help="samples per step (default: 32)")
    bench_train.add_argument("--max-length", type=int, default=64, help="maximum tokens per sample (default: 64)")
    bench_train.add_argument("--max-steps", type=int, default=30, metavar="N",
                             help="timed steps per configuration (default: 30; about 2 minutes on 2 CPU cores)")
    bench_train.add_argument("--repeats", type=int, default=3, help="interleaved groups of steps (default: 3)")
    bench_train.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (default: 2)")
    bench_train.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                             help="auto: fp32, and bf16 where the device runs it natively; fp32: fp32 only; bf16: "
                                  "fp32 and bf16 even where bf16 is emulated (default: auto)")
    bench_train.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_train.set_defaults(func=cmd_benchmark_train)

    check = sub.add_parser(
        "check-backbone", help="check that an encoder, run one layer at a time, computes what its own forward does",
        description="Load the encoder SOURCE (a local directory, a hub name or an alias: minilm-l6, mpnet-base), "
                    "run a few real sentences through the model's own forward and through the layer-by-layer path "
                    "that exits use, and print each layer's largest difference, then OK or why it is refused. "
                    "Exit code 0 when OK, 2 when refused. train, evaluate and predict run the same check when "
                    "they load an encoder.")
    check.add_argument("source", help="a local model directory, a hub name, or an alias (minilm-l6, mpnet-base)")
    check.add_argument("--backbone-type", default="huggingface",
                       help="backbone plugin that loads it (default: huggingface; `adaptive-exit plugins` lists them)")
    check.add_argument("--num-layers", type=int, metavar="N", help="keep only the first N layers")
    check.add_argument("--json", action="store_true",
                       help='print {"ok", "max_abs_diff", "per_layer", "architecture", "num_layers", ...}')
    check.set_defaults(func=cmd_check_backbone)

    plugins = sub.add_parser("plugins", help="list signals, weightings, backbones and datasets with their plugins, "
                                             "and the broken plugins")
    plugins.add_argument("--json", action="store_true",
                         help='print {"signals": [...], "weightings": [...], ..., "broken": [...]}')
    plugins.set_defaults(func=cmd_plugins)

    for name, subparser in sub.choices.items():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        if command == name and name in SIGNAL_COMMANDS:
            kinds = ("signals", "weightings") if name in ("train", "sweep") else ("signals",)
            add_plugin_option_flags(subparser, kinds)
    return parser


def quiet_libraries() -> None:
    """Keep library log chatter and deprecation warnings off the terminal."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("alembic", "mlflow", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's SQL store logs each database error with its traceback, then raises it: the raised error gets its line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")


def known_error(exc: BaseException) -> str | None:
    """One line for an error of a kind the operating system, Unicode, JSON, safetensors, MLflow or its SQLite store
    raise (which file, what to do), or None for any other error."""
    from .writes import is_disk_full

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if is_disk_full(exc):
        return f"no space left on the disk ({first}); free some space"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte {exc.start} is not: {exc.reason}); convert it to UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"a file is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); correct or restore it"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" '{exc.filename}'" if exc.filename else ""
        advice = {errno.EACCES: "fix its permissions or pass another path", errno.EROFS: "pass another path",
                  errno.ENOENT: "check the path"}.get(exc.errno, "check the file and the disk")
        return f"{exc.strerror}{where}; {advice}"
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if "safetensors" in modules:
        return f"a safetensors file could not be written or read ({first}); check the file and the disk"
    if "mlflow" in modules:
        return f"MLflow failed: {first}; check MLFLOW_TRACKING_URI and its store, or pass --no-track"
    if "sqlite3" in modules or "sqlalchemy" in modules:
        return f"the MLflow store could not be used ({first}); check its file and the disk, or pass --no-track"
    return None


def _terminated() -> int:
    print("adaptive-exit: terminated", file=sys.stderr)
    return 143


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adaptive-exit`` command; returns the exit code."""
    import traceback

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ADAPTIVE_EXIT_DEBUG") == "1"
    quiet_libraries()
    terminate_on_sigterm()
    try:
        args = make_parser(argv).parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        if debug:
            traceback.print_exception(exc)
        print(f"adaptive-exit: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        return _terminated()
    except KeyboardInterrupt:
        print("adaptive-exit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if sigterm_received():  # SIGTERM's exception, turned into another one where it landed
            return _terminated()
        line = known_error(exc)
        if line is None:
            raise
        if debug:
            traceback.print_exception(exc)
        print(f"adaptive-exit: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
