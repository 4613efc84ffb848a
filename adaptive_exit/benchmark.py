"""Measured speed of early-exit inference against the full model, beside the layer speed-up and FLOPs ratio."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

import torch

from .data import load_task, make_loader, tokenize
from .errors import UsageError
from .early_exit import early_exit_forward, early_exit_stream
from .inference import final_forward, model_signal, chosen_threshold, text_columns
from .model import MultiExitModel, pool, pooling_weights
from .precision import Precision, cpu_description, cpu_line, default_device, emulated_bf16_note


STREAM_BATCHES = 8  # batches per timed run: predict's stream of texts, cut into runs for the interleaving


def _own_forward(model: MultiExitModel, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The full model through the encoder's own forward (for ``transformers`` encoders: the plain model), then the
    final classifier; None for an encoder without its own forward."""
    states = model.encoder.own_forward(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                       all_layers=False)
    if states is None:
        return None
    hidden = states[-1]
    return model.heads[-1](pool(hidden, pooling_weights(batch["attention_mask"], model.pooling, hidden.dtype)))


def _engine_forward(model: MultiExitModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return final_forward(model, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def _timed_passes(runs: dict[str, Callable[[list[int]], Any]], chunks: list[list[int]], repeats: int,
                  precision: Precision, bar: Any) -> dict[str, list[float]]:
    """Seconds each of ``runs`` takes over ``chunks`` (lists of batch indices), per pass: a warm-up pass, then
    ``repeats`` timed ones (``bar`` counts the batches). Interleaved chunk by chunk (each chunk through every run in
    turn), so that a slower spell of the machine falls on all of them alike; all in one autocast region, as
    ``predict`` has, so that the warm-up pass casts the weights once for every run."""
    cuda = precision.device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in runs}
    with precision.autocast():
        for timed in [False] + [True] * repeats:
            spent = dict.fromkeys(runs, 0.0)
            for chunk in chunks:
                for name, run in runs.items():
                    if cuda:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    run(chunk)
                    if cuda:
                        torch.cuda.synchronize()
                    spent[name] += time.perf_counter() - start
                bar.update(len(chunk))  # between chunks: costs nothing timed
            if timed:
                for name, seconds in spent.items():
                    times[name].append(seconds)
    return times


def _flops_ratio(model: MultiExitModel, lengths: torch.Tensor, exit_index: torch.Tensor) -> float | None:
    """Full-model FLOPs / early-exit FLOPs over the samples' real token counts (heads and signal included)."""
    encoder = model.encoder
    if encoder.layer_flops(1) is None:
        return None
    classes = model.config["num_labels"]
    head = 2 * encoder.hidden_size * classes
    full = early = 0.0
    for length, leave in zip(lengths.tolist(), exit_index.tolist()):
        layer = encoder.layer_flops(length)
        pooling = length * encoder.hidden_size
        full += model.num_exits * layer + pooling + head
        used = leave + 1
        early += used * (layer + pooling + head) + min(used, model.num_exits - 1) * 10 * classes
    return full / early


@torch.no_grad()
def benchmark_model_dir(model_dir: str, threshold: float | None = None, batch_sizes: tuple[int, ...] = (1, 32),
                        repeats: int = 5, max_samples: int | None = None, split: str = "validation",
                        signal: str | None = None, signal_options: dict[str, Any] | None = None,
                        precision: str = "auto") -> dict[str, Any]:
    """Time the full model and early exit on the same tokenized inputs, median of ``repeats`` passes, interleaved in
    runs of ``STREAM_BATCHES`` batches: early exit streams each run as ``predict`` streams its texts (every layer
    call refilled to the batch size), and batch by batch as ``early_exit_forward`` runs one batch;
    ``signal_options`` go over the options the model keeps for its signal."""
    if repeats < 1 or any(b < 1 for b in batch_sizes):
        raise UsageError("--repeats and every batch size must be at least 1")
    from tqdm.auto import tqdm

    runs_in = Precision(precision, default_device())
    device = runs_in.device
    note = emulated_bf16_note(device) if runs_in.name == "bf16" else None
    if note:
        print(note, file=sys.stderr)
    model = MultiExitModel.from_pretrained(model_dir).to(device)
    signal_obj = model_signal(model, signal, signal_options).to(device)
    threshold = chosen_threshold(model, signal_obj, threshold)
    from .config import DataConfig

    data_values = dict(model.config["run"]["data"], eval_split=split, max_eval_samples=max_samples)
    task = load_task(DataConfig.model_validate(data_values))
    texts = task.splits[split]
    tokenized = tokenize(task, model.tokenizer, data_values["max_length"], (split,))[split]
    columns = text_columns([{f: row[f] for f in task.text_fields} for row in texts], list(task.text_fields))
    report: dict[str, Any] = {"threshold": threshold, "signal": signal_obj.name, "samples": len(tokenized),
                              "device": device.type, "cpu": cpu_description(), "precision": runs_in.name,
                              "torch_threads": torch.get_num_threads(), "batch_sizes": {}}
    for batch_size in batch_sizes:
        batches = [{k: v.to(device) for k, v in b.items()} for b in make_loader(tokenized, model.tokenizer, batch_size)]
        with runs_in.autocast():
            exit_index = early_exit_stream(model, batches, signal_obj, threshold, batch_size).exit_index
        has_own_forward = _own_forward(model, batches[0]) is not None  # else timed the engine's way only
        lengths = torch.cat([b["attention_mask"].sum(1) for b in batches])
        layer_speedup = model.num_exits * exit_index.numel() / float((exit_index + 1).sum())
        text_batches = [[c[i:i + batch_size] for c in columns] for i in range(0, len(tokenized), batch_size)]
        max_length = data_values["max_length"]

        def tokenized_batch(index: int) -> dict[str, torch.Tensor]:
            return dict(model.tokenizer(*text_batches[index], padding=True, truncation=True, max_length=max_length,
                                        return_tensors="pt").to(device))

        def stream(given: Any) -> Any:
            return early_exit_stream(model, given, signal_obj, threshold, batch_size)

        def one_batch(model: MultiExitModel, batch: dict[str, torch.Tensor]) -> Any:
            return early_exit_forward(model, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                      signal_obj, threshold)

        def each(forward: Callable[..., Any], chunk: list[int]) -> None:
            for i in chunk:
                forward(model, batches[i])

        plain = _own_forward if has_own_forward else _engine_forward
        runs: dict[str, Callable[[list[int]], Any]] = {
            "engine": lambda chunk: each(_engine_forward, chunk),
            "early": lambda chunk: stream(batches[i] for i in chunk),
            "early_per_batch": lambda chunk: each(one_batch, chunk)}
        if has_own_forward:
            runs["hf"] = lambda chunk: each(_own_forward, chunk)
        runs["hf_e2e"] = lambda chunk: [plain(model, tokenized_batch(i)) for i in chunk]
        runs["early_e2e"] = lambda chunk: stream(tokenized_batch(i) for i in chunk)
        chunks = [list(range(i, min(i + STREAM_BATCHES, len(batches)))) for i in range(0, len(batches), STREAM_BATCHES)]
        bar = tqdm(total=(repeats + 1) * len(batches), desc=f"timing batch size {batch_size}", unit="batch",
                   file=sys.stderr)
        times = _timed_passes(runs, chunks, repeats, runs_in, bar)
        bar.close()
        median = {name: statistics.median(values) for name, values in times.items()}
        full = min(median.get("hf", median["engine"]), median["engine"])
        measured = full / median["early"]
        report["batch_sizes"][str(batch_size)] = {
            "layer_speedup": layer_speedup,
            "flops_ratio": _flops_ratio(model, lengths, exit_index),
            "measured_speedup": measured,
            "efficiency": measured / layer_speedup,
            "per_batch_speedup": full / median["early_per_batch"],
            "per_batch_efficiency": full / median["early_per_batch"] / layer_speedup,
            "end_to_end_speedup": median["hf_e2e"] / median["early_e2e"],
            "overhead_per_visited_layer_ms": _overhead_per_layer(median["early"], median["engine"], lengths, exit_index,
                                                                 model.num_exits),
            "seconds": {"full_hf": median.get("hf"), "full_engine": median["engine"], "early_exit": median["early"],
                        "early_exit_per_batch": median["early_per_batch"],
                        "full_hf_with_tokenization": median["hf_e2e"],
                        "early_exit_with_tokenization": median["early_e2e"]},
        }
    return report


def _overhead_per_layer(early: float, full: float, lengths: torch.Tensor, exit_index: torch.Tensor,
                        num_exits: int) -> float:
    """Milliseconds early exit spends per layer a sample visits beyond the work of those layers: its time minus the
    full model's time (the engine's) scaled by the share of layer-tokens early exit runs, over the layer visits."""
    lengths = lengths.double()
    share = float((lengths * (exit_index + 1)).sum() / (lengths * num_exits).sum())
    return 1000 * (early - full * share) / float((exit_index + 1).sum())


def format_report(report: dict[str, Any]) -> str:
    """The benchmark as a small table."""
    lines = [f"signal {report['signal']} at threshold {report['threshold']:.6g}, {report['samples']} samples, "
             f"{report['device']} ({report['precision']}) with {report['torch_threads']} threads",
             cpu_line(report["cpu"]),
             f"{'batch':>5} {'layer x':>8} {'FLOPs x':>8} {'measured x':>10} {'efficiency':>10} {'with tokenization x':>20} "
             f"{'per batch x':>12} {'efficiency':>10}"]
    for size, row in report["batch_sizes"].items():
        flops = "n/a" if row["flops_ratio"] is None else f"{row['flops_ratio']:.2f}"
        lines.append(f"{size:>5} {row['layer_speedup']:>8.2f} {flops:>8} {row['measured_speedup']:>10.2f} "
                     f"{row['efficiency']:>10.2f} {row['end_to_end_speedup']:>20.2f} {row['per_batch_speedup']:>12.2f} "
                     f"{row['per_batch_efficiency']:>10.2f}")
    overhead = ", ".join(f"{row['overhead_per_visited_layer_ms']:.2f} ms at batch {size}"
                         for size, row in report["batch_sizes"].items())
    lines.append(f"early exit's overhead per layer a sample visits: {overhead}")
    lines.append(f"measured x = full-model time (faster of transformers' forward and the engine's) / early-exit time, "
                 f"same tokenized inputs, interleaved in runs of {STREAM_BATCHES} batches, median of repeats after a "
                 f"warm-up pass; early exit streams each run as predict does (every layer call refilled to the batch "
                 f"size), per batch x runs each batch alone")
    return "\n".join(lines)
