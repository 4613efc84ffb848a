"""What early exit's work between two layers costs right after a layer and in a tight loop, and what a layer's
matrix multiply costs as the rows left shrink (fp32 and bf16).

    python benchmarks/between_layers.py MODEL_DIR [--precision auto|fp32|bf16] [--tokens 28] [--repeats 300]

Part 1 runs the model's first layer on one sentence of ``--tokens`` tokens before each timed call (median of
``--repeats``), then the same call ``--repeats`` times in a row: the autocast switch, the exit head, the checked
signal score, the signal's own score, the host's exit test and a lone add. Part 2 times the whole step between
two layers (exit head, checked score, host exit test) after nothing, after a layer, after a sweep over 32 MB of
memory and after a 2.5 ms sleep, and beside it the same arithmetic bare (in fp32: pooling, the head's matrix multiply,
the signal's score, one read): either costs alike whenever it does not run hot in the caches. Part 3
times ``Linear(hidden, 4 * hidden)`` on 28 to 1,280 rows (100 calls each, weights in fp32 and in bf16): a fixed
cost per call shows as time that does not halve with the rows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from adaptive_exit import MultiExitModel, encoder_calls
from adaptive_exit.exits import ExitOutputs, meets_on_host
from adaptive_exit.inference import chosen_threshold, model_signal
from adaptive_exit.model import pooling_weights
from adaptive_exit.precision import Precision, cpu_description, cpu_line, full_precision
from adaptive_exit.signals import checked_score


def median_us(call: Callable[[], Any], repeats: int, before: Callable[[], Any] | None = None) -> float:
    """Median microseconds of ``call``, with ``before`` run (untimed) ahead of each call if given."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def between_layers(model: MultiExitModel, precision: Precision, tokens: int, repeats: int) -> None:
    signal = model_signal(model)
    threshold = chosen_threshold(model, signal, None)
    ids = torch.randint(1000, 2000, (1, tokens))
    mask = torch.ones_like(ids)
    with torch.no_grad(), precision.autocast():
        hidden, context = encoder_calls.start(model.encoder, ids, None, mask)
        weights = pooling_weights(mask, model.pooling, hidden.dtype)
        hidden = encoder_calls.run_layer(model.encoder, 0, hidden, context)
        with full_precision(hidden.device):
            pooled, logits = model.exit_output(0, hidden, weights)
            view = ExitOutputs(logits.unsqueeze(0), pooled.unsqueeze(0))
            scores = checked_score(signal, view)[-1]

        def switch() -> None:
            with full_precision(hidden.device):
                pass

        def head() -> None:
            with full_precision(hidden.device):
                model.exit_output(0, hidden, weights)

        def score() -> None:
            with full_precision(hidden.device):
                checked_score(signal, ExitOutputs(logits.unsqueeze(0), pooled.unsqueeze(0)))

        parts = {"autocast switch (full_precision)": switch, "exit head": head, "checked signal score": score,
                 "signal.score alone": lambda: signal.score(view),
                 "host exit test": lambda: meets_on_host(scores, threshold, signal.exit_when),
                 "a lone add": lambda: logits + 1}
        def layer() -> None:
            encoder_calls.run_layer(model.encoder, 0, hidden, context)

        layer_us = median_us(layer, repeats)
        print(f"part 1: one sentence of {tokens} tokens, {precision.name}; a layer takes {layer_us:.0f} us")
        print(f"{'':34} {'after a layer':>14} {'in a row':>10}")
        for name, call in parts.items():
            print(f"{name:34} {median_us(call, repeats, layer):>11.0f} us {median_us(call, repeats):>7.0f} us")

        def step() -> None:
            with full_precision(hidden.device):
                pooled, logits = model.exit_output(0, hidden, weights)
                scores = checked_score(signal, ExitOutputs(logits.unsqueeze(0), pooled.unsqueeze(0)))[-1]
            meets_on_host(scores, threshold, signal.exit_when)

        head_layer = model.heads[0].classifier

        def bare_step() -> None:  # the same arithmetic in fp32, without the engine's checks and rounding
            with full_precision(hidden.device):
                bare_pooled = torch.bmm(weights, hidden.float()).squeeze(1)
                bare_logits = torch.nn.functional.linear(bare_pooled, head_layer.weight, head_layer.bias)
                signal.score(ExitOutputs(bare_logits.unsqueeze(0), bare_pooled.unsqueeze(0)))[-1].tolist()

        memory = torch.zeros(8 * 2 ** 20)  # 32 MB, more than the caches hold
        befores = {"nothing": None, "a layer": layer, "a sweep over 32 MB": lambda: memory.add_(1.0),
                   "a 2.5 ms sleep": lambda: time.sleep(0.0025)}
        print("part 2: the step between two layers (exit head, checked score, host exit test) after")
        print(f"{'':34} {'the step':>14} {'bare':>10}")
        for name, before in befores.items():
            print(f"{name:34} {median_us(step, repeats, before):>11.0f} us {median_us(bare_step, repeats, before):>7.0f} us")


def matmul_rows(hidden_size: int) -> None:
    print(f"part 3: Linear({hidden_size}, {4 * hidden_size}), 100 calls each, median")
    linear = torch.nn.Linear(hidden_size, 4 * hidden_size)
    for dtype in (torch.float32, torch.bfloat16):
        layer = linear.to(dtype)
        row = []
        for rows in (28, 160, 640, 1280):
            x = torch.randn(rows, hidden_size, dtype=dtype)
            with torch.no_grad():
                layer(x)
                row.append(f"{rows} rows {median_us(lambda: layer(x), 100):.0f} us")
        print(f"{str(dtype).removeprefix('torch.'):>9}: " + ", ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="as train's --precision (default: auto)")
    parser.add_argument("--tokens", type=int, default=28, help="the sentence's length (default: 28)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per figure (default: 300)")
    args = parser.parse_args()
    model = MultiExitModel.from_pretrained(args.model_dir)
    print(cpu_line(cpu_description()), f"{torch.get_num_threads()} threads")
    between_layers(model, Precision(args.precision, torch.device("cpu")), args.tokens, args.repeats)
    matmul_rows(model.encoder.hidden_size)


if __name__ == "__main__":
    main()
