"""Training throughput: samples per second of real training steps for each precision and batching."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .errors import UsageError

CONFIGS = {"fp32-random": ("fp32", False), "fp32-grouped": ("fp32", True),
           "bf16-random": ("bf16", False), "bf16-grouped": ("bf16", True)}


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
                       seed: int = 1, num_layers: int | None = None) -> dict[str, Any]:
    """Time training steps of each of ``CONFIGS`` on the real model and data, interleaved.

    Every configuration trains on ``max_steps`` representative batches of one epoch in its batching,
    split into ``repeats`` groups of similar make-up; the groups run in turn across configurations
    after ``warmup`` steps each, and each figure is the median over the groups.
    """
    from transformers import DataCollatorWithPadding

    from .config import RunConfig
    from .data import TrainBatches, load_task, token_lengths, tokenize
    from .model import MultiExitModel, signal_for
    from .plugins import create, lookup
    from .precision import Precision, default_device
    from .training import Trainable, make_optimizer, model_config, set_seed, train_step

    if max_steps < repeats or repeats < 1 or warmup < 0 or batch_size < 1:
        raise UsageError("need --repeats >= 1, --max-steps >= --repeats, --warmup >= 0 and --batch-size >= 1")
    set_seed(seed)
    device = default_device()
    config = RunConfig.model_validate({"model": {"backbone": backbone, "num_layers": num_layers},
                                       "data": {"dataset": dataset, "max_length": max_length},
                                       "train": {"batch_size": batch_size, "seed": seed}})
    task = load_task(config.data)
    encoder = lookup("backbones", "huggingface").cls().load(backbone, num_layers)
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
    for name, (precision, grouped) in CONFIGS.items():
        epoch = TrainBatches(lengths, batch_size, seed, grouped).global_batches()
        chosen = representative_batches(epoch, lengths, max_steps)
        if len(chosen) < repeats:
            raise UsageError(f"an epoch has only {len(chosen)} batches; pass --repeats {len(chosen)} or less")
        groups = [[prepared(b) for b in chosen[r::repeats]] for r in range(repeats)]
        plans[name] = (Precision(precision, device), groups, [prepared(b) for b in chosen[::-1][:warmup]])

    step = 0

    def run(precision: Precision, batches: list[dict[str, torch.Tensor]]) -> float:
        nonlocal step
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            train_step(forward, model, signal, weighting, optimizer, scheduler, batch, step, 1.0, precision)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for precision, _, warm in plans.values():
        run(precision, warm)
    seconds: dict[str, list[float]] = {name: [] for name in plans}
    for r in range(repeats):
        for name, (precision, groups, _) in plans.items():
            seconds[name].append(run(precision, groups[r]))
    report: dict[str, Any] = {"device": device.type, "torch_threads": torch.get_num_threads(), "backbone": backbone,
                              "num_exits": model.num_exits, "dataset": dataset, "batch_size": batch_size,
                              "max_length": max_length, "steps": max_steps, "repeats": repeats, "configs": {}}
    for name, (precision, groups, _) in plans.items():
        rates = {"samples": [], "padded": [], "real": []}
        for group, took in zip(groups, seconds[name]):
            rates["samples"].append(sum(len(b["labels"]) for b in group) / took)
            rates["padded"].append(sum(b["attention_mask"].numel() for b in group) / took)
            rates["real"].append(sum(int(b["attention_mask"].sum()) for b in group) / took)
        padded = sum(b["attention_mask"].numel() for g in groups for b in g)
        real = sum(int(b["attention_mask"].sum()) for g in groups for b in g)
        report["configs"][name] = {
            "precision": precision.name, "group_by_length": CONFIGS[name][1],
            "samples_per_second": statistics.median(rates["samples"]),
            "seconds_per_step": statistics.median(took / len(g) for took, g in zip(seconds[name], groups)),
            "padded_tokens_per_second": statistics.median(rates["padded"]),
            "real_tokens_per_second": statistics.median(rates["real"]),
            "padding_share": 1 - real / padded,
        }
    base = report["configs"]["fp32-random"]["samples_per_second"]
    for row in report["configs"].values():
        row["vs_fp32_random"] = row["samples_per_second"] / base
    report["speedup"] = report["configs"]["bf16-grouped"]["vs_fp32_random"]
    return report


def format_training_report(report: dict[str, Any]) -> str:
    """The training benchmark as a small table."""
    lines = [f"{report['backbone']} ({report['num_exits']} exits), {report['dataset']}, batch {report['batch_size']}, "
             f"{report['device']} with {report['torch_threads']} threads; {report['steps']} steps per configuration "
             f"in {report['repeats']} interleaved groups, medians",
             f"{'configuration':<14} {'samples/s':>10} {'s/step':>7} {'padded tok/s':>13} {'real tok/s':>11} "
             f"{'padding':>8} {'vs fp32-random':>15}"]
    for name, row in report["configs"].items():
        lines.append(f"{name:<14} {row['samples_per_second']:>10.1f} {row['seconds_per_step']:>7.3f} "
                     f"{row['padded_tokens_per_second']:>13.0f} {row['real_tokens_per_second']:>11.0f} "
                     f"{row['padding_share']:>7.0%} {row['vs_fp32_random']:>14.2f}x")
    lines.append(f"speed-up of bf16 + length-grouped batches over fp32 + random batches: {report['speedup']:.2f}x")
    return "\n".join(lines)
