"""Real early exit: layer by layer, samples leave as soon as their signal says so, and every layer call is filled
up to the batch size from the samples waiting at that layer (over a stream of batches)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from . import encoder_calls
from .backbones import LayerContext
from .exits import ExitOutputs, meets_on_host
from .model import pooling_weights
from .precision import full_precision
from .signals import Signal, checked_score


@dataclass
class EarlyExitOutput:
    """Each sample's answer: the logits of the exit it left at, and that exit's 0-based index."""

    logits: torch.Tensor
    exit_index: torch.Tensor


Answers = tuple[list[int], torch.Tensor, int]  # samples (places in the stream), their logits, the exit they left at


@dataclass
class _Block:
    """Samples waiting at the same layer, run together: their places in the stream, the states before that layer,
    their mask trimmed to the longest, and (once made) the layer context, pooling weights and exits so far."""

    samples: list[int]
    hidden: torch.Tensor
    mask: torch.Tensor
    context: LayerContext | None = None
    weights: torch.Tensor | None = None
    history: tuple[torch.Tensor, torch.Tensor] | None = None  # [exits, rows, classes] logits, [exits, rows, hidden]


def _rows(block: _Block, index: torch.Tensor | slice, samples: list[int]) -> _Block:
    """The block's rows ``index`` (a boolean mask or a slice; ``samples`` are theirs), trimmed to their longest."""
    mask = block.mask[index]
    used = mask.any(0).nonzero()
    width = int(used.max()) + 1 if used.numel() else mask.shape[1]
    history = None if block.history is None else (block.history[0][:, index], block.history[1][:, index])
    return _Block(samples, block.hidden[index][:, :width], mask[:, :width], history=history)


def _merged(blocks: list[_Block]) -> _Block:
    """One block of the rows of ``blocks`` (at the same layer), padded to the longest."""
    width = max(b.mask.shape[1] for b in blocks)
    hidden = torch.cat([torch.nn.functional.pad(b.hidden, (0, 0, 0, width - b.mask.shape[1])) for b in blocks])
    mask = torch.cat([torch.nn.functional.pad(b.mask, (0, width - b.mask.shape[1])) for b in blocks])
    history = None
    if blocks[0].history is not None:
        history = (torch.cat([b.history[0] for b in blocks], 1), torch.cat([b.history[1] for b in blocks], 1))
    return _Block([s for b in blocks for s in b.samples], hidden, mask, history=history)


def _take(waiting: collections.deque, size: int) -> _Block:
    """Up to ``size`` rows from the front of a layer's queue, as one block (a block too big is split)."""
    taken, rows = [], 0
    while rows < size and waiting:
        block = waiting.popleft()
        if rows + len(block.samples) > size:
            need = size - rows
            waiting.appendleft(_rows(block, slice(need, None), block.samples[need:]))
            block = _rows(block, slice(None, need), block.samples[:need])
        taken.append(block)
        rows += len(block.samples)
    return taken[0] if len(taken) == 1 else _merged(taken)


@torch.no_grad()
def early_exit_stream(model: Any, batches: Iterable[dict[str, torch.Tensor]], signal: Signal, threshold: float,
                      batch_size: int) -> EarlyExitOutput:
    """Early exit over ``batches`` (tokenized: ``input_ids``, ``attention_mask``, maybe ``token_type_ids``), every
    answer in the order of the samples in the stream.

    Each layer call runs up to ``batch_size`` samples waiting at that layer, deepest full layer first; a new batch
    is embedded only when no layer has ``batch_size`` waiting, and once the batches are all read the rest are run
    shallowest layer first (so that each layer gathers what is left before it runs). After each exit the samples
    whose score meets ``threshold`` under the signal's rule leave, the others wait at the next layer. Gives the
    predictions and exit layers of the all-exits simulation, whatever samples share a layer call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    encoder, num_exits = model.encoder, model.num_exits
    waiting: list[collections.deque] = [collections.deque() for _ in range(num_exits)]
    counts = [0] * num_exits
    done: list[Answers] = []
    source, reading, fed = iter(batches), True, 0
    while True:
        index = next((k for k in range(num_exits - 1, -1, -1) if counts[k] >= batch_size), None)
        if index is None and reading:
            batch = next(source, None)
            if batch is None:
                reading = False
            elif batch["input_ids"].shape[0]:
                ids, mask = batch["input_ids"], batch["attention_mask"]
                hidden, context = encoder_calls.start(encoder, ids, batch.get("token_type_ids"), mask)
                waiting[0].append(_Block(list(range(fed, fed + ids.shape[0])), hidden, mask, context))
                counts[0] += ids.shape[0]
                fed += ids.shape[0]
            continue
        if index is None:
            index = next((k for k in range(num_exits) if counts[k]), None)
            if index is None:
                break
        block = _take(waiting[index], batch_size)
        counts[index] -= len(block.samples)
        answers, stay = _run(model, index, block, signal, threshold)
        done.extend(answers)
        if stay is not None:
            waiting[index + 1].append(stay)
            counts[index + 1] += len(stay.samples)
    if not done:
        device = next(model.parameters()).device
        return EarlyExitOutput(torch.empty(0, model.config["num_labels"], device=device),
                               torch.empty(0, dtype=torch.long, device=device))
    return _in_stream_order(done, fed)


def _run(model: Any, index: int, block: _Block, signal: Signal,
         threshold: float) -> tuple[list[Answers], _Block | None]:
    """Layer ``index`` and its exit for ``block``: the answers of those who leave, and the block of those who stay
    (None if nobody does)."""
    encoder = model.encoder
    if block.context is None:
        block.context = encoder_calls.context(encoder, block.hidden, block.mask)
    if block.weights is None:
        block.weights = pooling_weights(block.mask, model.pooling, block.hidden.dtype)
    hidden = encoder_calls.run_layer(encoder, index, block.hidden, block.context)
    last = index == model.num_exits - 1
    with full_precision(hidden.device):  # one switch per layer for the exit and its score
        pooled, logits = model.exit_output(index, hidden, block.weights)
        if last:
            decided = None
        else:
            if signal.uses_history:
                if block.history is None:
                    rows = len(block.samples)
                    block.history = (logits.new_zeros(model.num_exits, rows, logits.shape[-1]),
                                     pooled.new_zeros(model.num_exits, rows, pooled.shape[-1]))
                block.history[0][index] = logits
                block.history[1][index] = pooled
                view = ExitOutputs(block.history[0][: index + 1], block.history[1][: index + 1])
            else:
                view = ExitOutputs(logits.unsqueeze(0), pooled.unsqueeze(0))
            decided = meets_on_host(checked_score(signal, view)[-1], threshold, signal.exit_when)
    leaving = len(block.samples) if decided is None else sum(decided)
    if leaving == len(block.samples):
        return [(block.samples, logits, index)], None
    block.hidden = hidden
    if leaving == 0:
        return [], block  # the same rows go on: context and pooling weights still hold
    gone: list[int] = []
    kept: list[int] = []
    for sample, out in zip(block.samples, decided):
        (gone if out else kept).append(sample)
    leave = torch.tensor(decided, device=hidden.device)
    return [(gone, logits[leave], index)], _rows(block, ~leave, kept)


def _in_stream_order(done: list[Answers], count: int) -> EarlyExitOutput:
    """The answers of ``done`` (samples, their logits, their exit) as one output in stream order; a RuntimeError if
    they are not one answer for each of the ``count`` samples (no row left unwritten)."""
    exits: list[int | None] = [None] * count
    for samples, _, index in done:
        for sample in samples:
            exits[sample] = index
    answered = [s for samples, _, _ in done for s in samples]
    if len(answered) != count or None in exits:
        raise RuntimeError(f"early exit answered {len(answered)} times for {count} samples; please report this")
    first_samples, first_logits, _ = done[0]
    exit_index = torch.tensor(exits, device=first_logits.device)
    if len(done) == 1 and first_samples == list(range(count)):
        return EarlyExitOutput(first_logits, exit_index)
    logits = first_logits.new_empty(count, first_logits.shape[-1])
    logits[torch.tensor(answered, device=logits.device)] = torch.cat([chunk for _, chunk, _ in done])
    return EarlyExitOutput(logits, exit_index)


def early_exit_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None, signal: Signal, threshold: float) -> EarlyExitOutput:
    """Early exit on one batch (``early_exit_stream`` of it alone): deeper layers only see the samples still
    undecided, cut to their longest sample."""
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    return early_exit_stream(model, [batch], signal, threshold, max(1, input_ids.shape[0]))
