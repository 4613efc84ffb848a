"""Where early exit's time goes at batch size 1: the full model and early exit on the same tokenized evaluation
sentences, each call of the layer loop timed (embeddings, layers, exit heads, the signal, the rest), one after the
other, ``--repeats`` times, with the layer speed-up and the token-weighted one (deep samples are longer).

    python benchmarks/profile_early_exit.py MODEL_DIR [--samples 400] [--repeats 2] [--precision auto|fp32|bf16]

It times with ``time.perf_counter`` around the engine's own functions (swapped in for the run), so its totals run a
little above ``adaptive-exit benchmark``'s; compare the rows, not the totals, with that command's figures.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any, Callable

import torch

import adaptive_exit.early_exit as early_exit
import adaptive_exit.inference as inference
from adaptive_exit import MultiExitModel
from adaptive_exit.config import DataConfig
from adaptive_exit.data import load_task, make_loader, tokenize
from adaptive_exit.precision import Precision, cpu_description, cpu_line

PARTS = {"embeddings": (inference.encoder_calls, "start"), "layers": (inference.encoder_calls, "run_layer"),
         "signal": (early_exit, "checked_score")}


def timed(spent: collections.Counter, key: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--samples", type=int, default=400, help="validation sentences (default: 400)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating (default: 2)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="as train's --precision (default: auto)")
    args = parser.parse_args()
    runs_in = Precision(args.precision, torch.device("cpu"))
    model = MultiExitModel.from_pretrained(args.model_dir)
    signal = inference.model_signal(model)
    threshold = inference.chosen_threshold(model, signal, None)
    data = dict(model.config["run"]["data"], eval_split="validation", max_eval_samples=args.samples)
    task = load_task(DataConfig.model_validate(data))
    batches = list(make_loader(tokenize(task, model.tokenizer, data["max_length"], ("validation",))["validation"],
                               model.tokenizer, 1))
    spent: collections.Counter = collections.Counter()
    for key, (module, name) in PARTS.items():
        setattr(module, name, timed(spent, key, getattr(module, name)))
    model.exit_output = timed(spent, "exit heads", model.exit_output)
    paths = {"full": lambda b: inference.final_forward(model, b["input_ids"], b["attention_mask"],
                                                       b.get("token_type_ids")),
             "early": lambda b: early_exit.early_exit_forward(model, b["input_ids"], b["attention_mask"],
                                                             b.get("token_type_ids"), signal, threshold)}
    with torch.no_grad(), runs_in.autocast():  # one autocast region, as predict has
        exits = torch.cat([paths["early"](b).exit_index for b in batches])
        lengths = torch.tensor([float(b["attention_mask"].sum()) for b in batches], dtype=torch.float64)
        layers = model.num_exits
        print(cpu_line(cpu_description()), f"{torch.get_num_threads()} threads, {runs_in.name}")
        print(f"{len(batches)} samples at threshold {threshold:.4g}: layer speed-up "
              f"{layers * len(exits) / float((exits + 1).sum()):.2f}, token-weighted "
              f"{float((lengths * layers).sum() / (lengths * (exits + 1)).sum()):.2f}, mean length by exit "
              + " ".join(f"{float(lengths[exits == i].mean()):.1f}" if bool((exits == i).any()) else "-"
                         for i in range(layers)))
        for _ in range(args.repeats):
            for name, forward in paths.items():
                spent.clear()
                start = time.perf_counter()
                for batch in batches:
                    forward(batch)
                total = time.perf_counter() - start
                rest = total - sum(spent.values())
                parts = ", ".join(f"{key} {1000 * value / len(batches):.2f}" for key, value in spent.items())
                print(f"{name:>5}: {1000 * total / len(batches):.2f} ms per sample ({parts}, the rest "
                      f"{1000 * rest / len(batches):.2f})")


if __name__ == "__main__":
    main()
