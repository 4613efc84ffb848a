"""Training throughput: samples per second of real training steps for each precision and batching."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError
from .precision import CPUINFO, emulated_bf16_note

CONFIGS = {"fp32-random": ("fp32", False), "fp32-grouped": ("fp32", True),
           "bf16-random": ("bf16", False), "bf16-grouped": ("bf16", True)}
BENCHMARK_PRECISIONS = ("auto", "fp32", "bf16")


def chosen_configs(precision: str, device: torch.device | str,
                   cpuinfo: str | Path = CPUINFO) -> tuple[list[str], str | None]:
    """The ``CONFIGS`` to time for ``precision`` and a one-line note on what is skipped or emulated (or None).

    ``auto``: bf16 only where ``device`` runs it natively; ``fp32``: fp32 only; ``bf16``: both, even emulated.
    """
    if precision not in BENCHMARK_PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; choose one of {', '.join(BENCHMARK_PRECISIONS)}")
    fp32 = [name for name, (kind, _) in CONFIGS.items() if kind == "fp32"]
    if precision == "fp32":
        return fp32, None
    if precision == "auto":
        skipped = emulated_bf16_note(device, cpuinfo, then="the bf16 configurations are skipped; --precision bf16 "
                                                            "times them emulated")
        return (fp32, skipped) if skipped else (list(CONFIGS), None)
    return list(CONFIGS), emulated_bf16_note(device, cpuinfo)


def representative_batches(batches: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """``count`` of an epoch's batches at evenly spaced quantiles of their padded length.

    Their mean cost is that of the whole epoch (a few random batches of a length-grouped epoch would
    not be: their lengths vary far more than those of random batches).
    """
    ranked = sorted(batches, key=lambda batch: (max(lengths[i] for i in batch), len(batch)))
    if count >= len(ranked):
        return ranked
    if count == 1:
        return [ranked[len(ranked) // 2]]
    return [ranked[round(k * (len(ranked) - 1) / (count - 1))] for k in range(count)]


def benchmark_training(backbone: str = "minilm-l6", dataset: str = "movie-reviews", batch_size: int = 32,
                       max_length: int = 64, max_steps: int = 30, repeats: int = 3, warmup: int = 2,
                       seed: int = 1, num_layers: int | None = None, precision: str = "auto") -> dict[str, Any]:
    """Time training steps of each configuration ``chosen_configs(precision)`` gives, on the real model and data,
    interleaved (its note on stderr first, a progress bar on stderr while it runs).

    Every configuration trains on ``max_steps`` representative batches of one epoch in its batching,
    split into ``repeats`` groups of similar make-up; the groups run in turn across configurations
    after ``warmup`` steps each, and each figure is the median over the groups.
    """
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    from .config import RunConfig
    from .data import TrainBatches, load_task, token_lengths, tokenize
    from .encoder_calls import load_encoder
    from .model import MultiExitModel, signal_for
    from .plugins import create
    from .precision import Precision, cpu_description, default_device
    from .training import Trainable, make_optimizer, model_config, set_seed, train_step

    if max_steps < repeats or repeats < 1 or warmup < 0 or batch_size < 1:
        raise UsageError("need --repeats >= 1, --max-steps >= --repeats, --warmup >= 0 and --batch-size >= 1")
    set_seed(seed)
    device = default_device()
    names, note = chosen_configs(precision, device)
    if note:
        print(note, file=sys.stderr)
    config = RunConfig.model_validate({"model": {"backbone": backbone, "num_layers": num_layers},
                                       "data": {"dataset": dataset, "max_length": max_length},
                                       "train": {"batch_size": batch_size, "seed": seed}})
    task = load_task(config.data)
    encoder = load_encoder("huggingface", backbone, num_layers)
    model = MultiExitModel(encoder, model_config(config, task)).to(device).train()
    signal = signal_for(model, "entropy" if task.task == "classification" else "change", {}).to(device)
    weighting = create("weightings", "uniform", {}, signal=signal, num_exits=model.num_exits, total_steps=10 ** 9)
    optimizer = make_optimizer(model, signal, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    forward = Trainable(model, signal)
    train = tokenize(task, encoder.tokenizer, max_length, ("train",))["train"]
    lengths = token_lengths(train)
    collate = DataCollatorWithPadding(encoder.tokenizer)

    def prepared(batch: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate([train[i] for i in batch]).items()}

    plans = {}
    for name in names:
        kind, grouped = CONFIGS[name]
        epoch = TrainBatches(lengths, batch_size, seed, grouped).global_batches()
        chosen = representative_batches(epoch, lengths, max_steps)
        if len(chosen) < repeats:
            raise UsageError(f"an epoch has only {len(chosen)} batches; pass --repeats {len(chosen)} or less")
        groups = [[prepared(b) for b in chosen[r::repeats]] for r in range(repeats)]
        plans[name] = (Precision(kind, device), groups, [prepared(b) for b in chosen[::-1][:warmup]])

    step = 0
    total = sum(len(warm) + sum(len(g) for g in groups) for _, groups, warm in plans.values())
    bar = tqdm(total=total, desc="timing training steps", unit="step", file=sys.stderr)

    def run(runs_in: Precision, batches: list[dict[str, torch.Tensor]]) -> float:
        nonlocal step
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            train_step(forward, model, signal, weighting, optimizer, scheduler, batch, step, 1.0, runs_in)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        bar.update(len(batches))  # after the timing: the bar costs nothing timed
        return took

    for runs_in, _, warm in plans.values():
        run(runs_in, warm)
    seconds: dict[str, list[float]] = {name: [] for name in plans}
    for r in range(repeats):
        for name, (runs_in, groups, _) in plans.items():
            seconds[name].append(run(runs_in, groups[r]))
    bar.close()
    report: dict[str, Any] = {"device": device.type, "cpu": cpu_description(), "torch_threads": torch.get_num_threads(),
                              "backbone": backbone, "num_exits": model.num_exits, "dataset": dataset,
                              "batch_size": batch_size, "max_length": max_length, "steps": max_steps,
                              "repeats": repeats, "skipped": [name for name in CONFIGS if name not in plans],
                              "configs": {}}
    for name, (runs_in, groups, _) in plans.items():
        rates = {"samples": [], "padded": [], "real": []}
        for group, took in zip(groups, seconds[name]):
            rates["samples"].append(sum(len(b["labels"]) for b in group) / took)
            rates["padded"].append(sum(b["attention_mask"].numel() for b in group) / took)
            rates["real"].append(sum(int(b["attention_mask"].sum()) for b in group) / took)
        padded = sum(b["attention_mask"].numel() for g in groups for b in g)
        real = sum(int(b["attention_mask"].sum()) for g in groups for b in g)
        report["configs"][name] = {
            "precision": runs_in.name, "group_by_length": CONFIGS[name][1],
            "samples_per_second": statistics.median(rates["samples"]),
            "seconds_per_step": statistics.median(took / len(g) for took, g in zip(seconds[name], groups)),
            "padded_tokens_per_second": statistics.median(rates["padded"]),
            "real_tokens_per_second": statistics.median(rates["real"]),
            "padding_share": 1 - real / padded,
        }
    base = report["configs"]["fp32-random"]["samples_per_second"]
    for row in report["configs"].values():
        row["vs_fp32_random"] = row["samples_per_second"] / base
    report["speedup_config"] = "bf16-grouped" if "bf16-grouped" in plans else "fp32-grouped"
    report["speedup"] = report["configs"][report["speedup_config"]]["vs_fp32_random"]
    return report


def format_training_report(report: dict[str, Any]) -> str:
    """The training benchmark as a small table."""
    from .precision import cpu_line

    lines = [f"{report['backbone']} ({report['num_exits']} exits), {report['dataset']}, batch {report['batch_size']}, "
             f"{report['device']} with {report['torch_threads']} threads; {report['steps']} steps per configuration "
             f"in {report['repeats']} interleaved groups, medians",
             cpu_line(report["cpu"]),
             f"{'configuration':<14} {'samples/s':>10} {'s/step':>7} {'padded tok/s':>13} {'real tok/s':>11} "
             f"{'padding':>8} {'vs fp32-random':>15}"]
    for name, row in report["configs"].items():
        lines.append(f"{name:<14} {row['samples_per_second']:>10.1f} {row['seconds_per_step']:>7.3f} "
                     f"{row['padded_tokens_per_second']:>13.0f} {row['real_tokens_per_second']:>11.0f} "
                     f"{row['padding_share']:>7.0%} {row['vs_fp32_random']:>14.2f}x")
    if report["skipped"]:
        lines.append(f"skipped: {', '.join(report['skipped'])}")
    what = "bf16 + length-grouped" if report["speedup_config"] == "bf16-grouped" else "length-grouped"
    lines.append(f"speed-up of {what} batches over fp32 + random batches: {report['speedup']:.2f}x")
    return "\n".join(lines)
