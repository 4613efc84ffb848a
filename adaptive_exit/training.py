"""The training loop: data, model, optimizer, the weighting's loss each step, evaluation, saving."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoints
from .calibration import calibration_record, choose_threshold
from .config import RunConfig, validate_options
from .data import TrainBatches, load_task, make_loader, token_lengths, tokenize
from .encoder_calls import load_encoder
from .errors import DivergedError, UsageError
from .evaluation import EvaluationResult, split_outputs, sweep
from .lifecycle import RunInfo, lifecycle, raise_if_terminated
from .model import MultiExitModel, remove_saved_model, signal_for, write_json_atomically
from .plugins import blamed, call_lifecycle, create, lookup
from .precision import Precision
from .preflight import check_disk_room, check_max_length, check_training_data, claimed_output_dir
from .signals import require_task
from .weighting import checked_loss
from .writes import writing

EVAL_BATCH_SIZE = 64
EVALUATION = "evaluation.json"  # the final evaluation, saved with the model


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Distributed:
    """This process's place under ``torchrun`` (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def setup_distributed() -> Distributed:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return Distributed(rank, world_size, device)


def default_output_dir(config: RunConfig) -> str:
    """outputs/<dataset>-<weighting>-<signal>-<timestamp>."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{config.data.dataset}-{config.weighting.name}-{config.signal.name}-{stamp}"
    return str(Path("outputs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def chosen_plugins(config: RunConfig) -> dict[str, dict[str, str]]:
    """Name, providing plugin and version of the signal, weighting, backbone and dataset in the config."""
    chosen = {"signal": ("signals", config.signal.name), "weighting": ("weightings", config.weighting.name),
              "backbone": ("backbones", config.model.backbone_type), "dataset": ("datasets", config.data.dataset)}
    described = {}
    for key, (kind, name) in chosen.items():
        entry = lookup(kind, name)
        described[key] = {"name": name, "plugin": entry.plugin, "version": entry.version}
    return described


def make_optimizer(model: MultiExitModel, signal: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW with the encoder at --lr and the exit heads and signal at --head-lr; no decay on biases and norms."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = []
    for params, lr in ((model.encoder.named_parameters(), config.train.lr),
                       ([*model.heads.named_parameters(), *signal.named_parameters()], config.train.head_lr)):
        params = list(params)
        groups.append({"params": [p for n, p in params if not n.endswith(no_decay)], "lr": lr,
                       "weight_decay": config.train.weight_decay})
        groups.append({"params": [p for n, p in params if n.endswith(no_decay)], "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]])


class Trainable(torch.nn.Module):
    """Model and signal as one module, so DDP synchronises the signal's parameters too."""

    def __init__(self, model: MultiExitModel, signal: torch.nn.Module):
        super().__init__()
        self.model = model
        self.signal = signal

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def store_calibration(model: MultiExitModel, result: EvaluationResult, config: RunConfig) -> None:
    """Put the threshold for ``--calibrate-speedup`` into the model's config, or say why there is none."""
    target = config.train.calibrate_speedup
    if target is None:
        return
    try:
        point = choose_threshold(result, target_speedup=target)
    except UsageError as exc:
        print(f"adaptive-exit: no threshold stored: {exc}; run `adaptive-exit calibrate` later", file=sys.stderr)
        return
    model.config["calibration"] = calibration_record(result, point, config.data.eval_split, target, None)
    result.extra.update(calibrated_threshold=point.threshold, calibrated_speedup=point.speedup,
                        calibrated_metric=point.metric)


def save_model(model: MultiExitModel, signal: torch.nn.Module, result: EvaluationResult, output_dir: str) -> None:
    """Save the final evaluation (``evaluation.json``) and the model into ``output_dir`` (the model's config file,
    which every command reads first, last and atomically: an interrupted save leaves no loadable half model),
    then delete the training's checkpoints. A full disk is a DiskFullError, with what was written removed and the
    checkpoints kept for ``--resume``."""
    directory = Path(output_dir)

    def remove_partial() -> None:
        remove_saved_model(directory)
        (directory / EVALUATION).unlink(missing_ok=True)

    then = ("run the same command with --resume" if checkpoints.has_checkpoints(directory) else
            "train again (with --checkpoint-every 0 there is no checkpoint to resume from)")
    directory.mkdir(parents=True, exist_ok=True)
    with writing(f"the model into '{output_dir}'", directory, remove_partial, then=then):
        write_json_atomically(directory / EVALUATION, result.to_dict())
        model.save_pretrained(output_dir, signal=signal)
    shutil.rmtree(checkpoints.checkpoint_dir(output_dir), ignore_errors=True)


def train_step(forward: torch.nn.Module, model: MultiExitModel, signal: torch.nn.Module, weighting: Any,
               optimizer: torch.optim.Optimizer, scheduler: Any, batch: dict[str, torch.Tensor], step: int,
               max_grad_norm: float, precision: Precision | None = None) -> dict[str, float]:
    """One optimizer step on ``batch`` (``step``: steps taken so far); returns the terms worth logging.

    ``forward`` maps the batch to ``ExitOutputs`` (the model and signal, possibly wrapped by DDP); it
    runs under ``precision``'s autocast (default fp32), the losses in fp32 outside it.
    """
    precision = precision or Precision("fp32", batch["labels"].device)
    with blamed("weightings", type(weighting), "start_step"):
        weighting.start_step(model, step)
    with precision.autocast():
        outputs = forward(batch)
    loss = checked_loss(weighting, outputs, batch["labels"], step)
    total = loss.total
    logs = dict(loss.logs)
    with blamed("signals", type(signal), "loss"):
        signal_loss = signal.loss(outputs, batch["labels"])
    if signal_loss is not None:
        total = total + signal_loss
        logs["signal_loss"] = float(signal_loss.detach())
    optimizer.zero_grad(set_to_none=True)
    norm = precision.step(total, optimizer, [*model.parameters(), *signal.parameters()], max_grad_norm)
    if not torch.isfinite(total.detach()) or (not torch.isfinite(norm) and precision.name != "fp16"):
        terms = ", ".join(f"{key} {value:.4g}" for key, value in logs.items())
        raise DivergedError(f"training diverged at step {step + 1}: loss {float(total.detach()):.4g}, gradient norm "
                            f"{float(norm):.4g} ({terms}); lower --lr or --head-lr, or check the weighting and signal")
    scheduler.step()
    logs.update(loss=float(total.detach()), lr=scheduler.get_last_lr()[0])
    return logs


def probe_plugins(model: MultiExitModel, signal: Any, weighting: Any, dataset: Any, step: int,
                  precision: Precision) -> None:
    """Score a few training samples with the signal and with a copy of the weighting before the first step, so that
    a plugin that raises or returns the wrong shape fails before an epoch is spent (eval mode, random state kept)."""
    import copy

    from .signals import checked_score

    modes = (model.training, signal.training)
    model.eval()
    signal.eval()
    devices = [precision.device] if precision.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():  # a loader's iterator draws a seed, too
            batch = next(iter(make_loader(dataset.select(range(min(8, len(dataset)))), model.tokenizer, 8)))
            batch = {k: v.to(precision.device) for k, v in batch.items()}
            with precision.autocast():
                outputs = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            checked_score(signal, outputs)
            checked_loss(copy.deepcopy(weighting), outputs, batch["labels"], step)
    finally:
        model.train(modes[0])
        signal.train(modes[1])


def train_loader(dataset: Any, tokenizer: Any, config: RunConfig, dist: Distributed) -> Any:
    """This process's training batches: grouped by length or random (``train.group_by_length``)."""
    batches = TrainBatches(token_lengths(dataset), config.train.batch_size, config.train.seed,
                           config.train.group_by_length, dist.rank, dist.world_size)
    return make_loader(dataset, tokenizer, batch_sampler=batches)


def describe_setup(precision: Precision, config: RunConfig, dist: Distributed) -> str:
    """One line saying how training runs: device, precision, batching, threads."""
    requested = config.train.precision
    why = f" (auto on {'this GPU' if precision.device.type == 'cuda' else 'this CPU'})" if requested == "auto" else ""
    batching = "grouped by length" if config.train.group_by_length else "random"
    processes = f", {dist.world_size} processes" if dist.world_size > 1 else ""
    threads = f", {torch.get_num_threads()} threads" if precision.device.type == "cpu" else ""
    return f"training on {precision.device.type} in {precision.name}{why}, batches {batching}{processes}{threads}"


def target_range(task: Any) -> list[float] | None:
    """A regression task's lowest and highest training target (None for classification)."""
    if task.task != "regression":
        return None
    labels = task.splits["train"]["label"]
    return [float(min(labels)), float(max(labels))]


def model_config(config: RunConfig, task: Any) -> dict[str, Any]:
    """The dict saved with the model: what it is, and what it was trained with."""
    return {
        "backbone_type": config.model.backbone_type, "backbone": config.model.backbone, "task": task.task,
        "target_range": target_range(task), "num_labels": task.num_outputs, "label_names": task.label_names,
        "pooling": config.model.pooling,
        "dropout": config.model.dropout, "signal": config.signal.model_dump(),
        "weighting": config.weighting.model_dump(), "dataset": config.data.dataset,
        "text_fields": list(task.text_fields), "metric": task.metric, "run": config.model_dump(),
    }


def resolve_options(config: RunConfig) -> RunConfig:
    """The config with the chosen signal's and weighting's options validated and filled with their defaults."""
    resolved = {}
    for key, kind in (("signal", "signals"), ("weighting", "weightings")):
        choice = getattr(config, key)
        options = validate_options(lookup(kind, choice.name).cls.Options, choice.options, f"{key}.options")
        resolved[key] = choice.model_copy(update={"options": options.model_dump()})
    return config.model_copy(update=resolved)


def load_task_once(config: RunConfig, dist: Distributed) -> Any:
    """The dataset, prepared by rank 0 first (it may download and cache it), then read by the other ranks."""
    if dist.main:
        task = load_task(config.data)
    dist.barrier()
    return task if dist.main else load_task(config.data)


def train(config: RunConfig, parent: RunInfo | None = None, run_name: str | None = None,
          resume: bool = False) -> tuple[EvaluationResult | None, str | None]:
    """Train, evaluate and save one model; returns the final evaluation and the output directory (rank 0).

    ``parent`` makes the run a child of a sweep's run; ``run_name`` names it (default: weighting-signal);
    ``resume`` continues the training whose checkpoints are in ``config.output_dir``, into the same run.
    """
    dist = setup_distributed()
    plugins = chosen_plugins(config)
    precision = Precision(config.train.precision, dist.device)
    if dist.main:
        print(f"adaptive-exit: {describe_setup(precision, config, dist)}", file=sys.stderr)
    config = resolve_options(config)
    config = config.model_copy(update={"output_dir": config.output_dir or default_output_dir(config),
                                       "train": config.train.model_copy(update={"precision": precision.name})})
    output_dir = config.output_dir
    set_seed(config.train.seed)
    claimed = claimed_output_dir(output_dir, resume) if dist.main else contextlib.nullcontext()
    with claimed:
        saved = checkpoints.newest(output_dir) if resume else None
        if saved is not None:
            checkpoints.check_resumable(saved, config.model_dump(), dist.world_size)
        run = RunInfo("train", config.model_dump(), plugins, config.tracking.experiment or config.data.dataset,
                      config.tracking.enabled, run_name=run_name or f"{config.weighting.name}-{config.signal.name}",
                      parent=parent, state=dict(saved["run"]) if saved else {}, resumed=saved is not None)
        with lifecycle(run, active=dist.main) as outcome:
            model, signal, result = fit(config, run, dist, precision, saved)
            if dist.main:
                store_calibration(model, result, config)
                call_lifecycle("on_evaluate_end", run=run, results=result)
                save_model(model, signal, result, output_dir)
                outcome["output_dir"] = output_dir
    if dist.world_size > 1:
        torch.distributed.destroy_process_group()
    return result, (output_dir if dist.main else None)


def fit(config: RunConfig, run: RunInfo, dist: Distributed, precision: Precision,
        saved: dict[str, Any] | None) -> tuple[MultiExitModel, torch.nn.Module, EvaluationResult | None]:
    """Build model, signal, weighting and optimizer, continue from the checkpoint ``saved`` (if any), and train
    for ``config.train.epochs`` epochs, evaluating after each; returns model, signal and the last evaluation
    (rank 0; None on the other ranks)."""
    task = load_task_once(config, dist)
    require_task(config.signal.name, task.task)  # before the backbone loads
    check_training_data(task, config.data, warn=dist.main)
    if dist.main and saved is None:
        call_lifecycle("on_data_loaded", run=run, task=task, splits=("train", config.data.eval_split))
    encoder = load_encoder(config.model.backbone_type, config.model.backbone, config.model.num_layers)
    check_max_length(config.data.max_length, encoder, config.model.backbone)
    model = MultiExitModel(encoder, model_config(config, task)).to(dist.device)
    if dist.main:
        check_disk_room(config.output_dir, model, checkpoints=config.train.checkpoint_every != 0)
    signal = signal_for(model, config.signal.name, config.signal.options).to(dist.device)
    eval_split = config.data.eval_split
    tokenized = tokenize(task, encoder.tokenizer, config.data.max_length, ("train", eval_split))
    loader = train_loader(tokenized["train"], encoder.tokenizer, config, dist)
    epochs = config.train.epochs
    total_steps = len(loader) * epochs
    weighting = create("weightings", config.weighting.name, config.weighting.options, signal=signal,
                       num_exits=model.num_exits, total_steps=total_steps)
    optimizer = make_optimizer(model, signal, config)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.train.warmup_ratio * total_steps), total_steps)
    shared = {"model": model, "signal": signal, "optimizer": optimizer, "scheduler": scheduler,
              "scaler": precision.scaler}
    start = checkpoints.restore_shared(saved, shared) if saved is not None else checkpoints.Position()
    trainable = Trainable(model, signal)
    # weightings may freeze parameters for a stage, so some parameters can get no gradient in a step
    wrapped = (torch.nn.parallel.DistributedDataParallel(trainable, find_unused_parameters=True)
               if dist.world_size > 1 else trainable)
    if saved is not None:
        mine = saved["ranks"][dist.rank]
        if start.batch:  # the checkpoint is inside this epoch: its start_epoch ran before the state was taken
            with blamed("weightings", type(weighting), "start_epoch"):
                weighting.start_epoch(model, start.epoch)
        with blamed("weightings", type(weighting), "load_state_dict"):
            weighting.load_state_dict(mine["weighting"])
        checkpoints.set_rng_state(mine["rng"])
        if dist.main:
            print(f"adaptive-exit: resuming from {saved['path']} (epoch {start.epoch + 1}, step {start.step})",
                  file=sys.stderr)
    probe_plugins(model, signal, weighting, tokenized["train"], start.step, precision)
    schedule = checkpoints.Schedule(config.train.checkpoint_every, dist.world_size)

    def checkpoint(position: checkpoints.Position) -> None:
        state = checkpoints.capture(shared, {"weighting": weighting}, position,
                                    {"config": config.model_dump(), "run": dict(run.state)}, dist.world_size)
        if dist.main:
            checkpoints.write(config.output_dir, state, position.step)
        schedule.written()
        dist.barrier()

    def evaluate(epoch: int) -> EvaluationResult | None:
        """The per-epoch sweep after ``epoch`` (1-based) epochs, on rank 0 (None on the others)."""
        found = None
        if dist.main:
            signal.eval()
            outs, labels = split_outputs(model, tokenized[eval_split], EVAL_BATCH_SIZE, dist.device, precision)
            found = sweep(outs, labels, signal, task.metric)
            found.epoch = epoch
            call_lifecycle("on_evaluate_end", run=run, results=found)
        dist.barrier()
        return found

    result = None
    if saved is not None and start.batch == 0 and start.epoch > 0:  # stopped at an epoch's end, maybe while evaluating
        result = evaluate(start.epoch)
    step = start.step
    for epoch in range(start.epoch, epochs):
        skip = start.batch if epoch == start.epoch else 0
        loader.batch_sampler.set_epoch(epoch, skip)
        if not skip:
            with blamed("weightings", type(weighting), "start_epoch"):
                weighting.start_epoch(model, epoch)
        wrapped.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not dist.main, initial=skip,
                   total=skip + len(loader), mininterval=1.0, dynamic_ncols=True)
        for batch_index, batch in enumerate(bar, start=skip + 1):
            raise_if_terminated()
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            logs = train_step(wrapped, model, signal, weighting, optimizer, scheduler, batch, step,
                              config.train.max_grad_norm, precision)
            step += 1
            logs["epoch"] = epoch + 1
            bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
            if dist.main:
                call_lifecycle("on_step_end", run=run, step=step, logs=logs)
            if batch_index < skip + len(loader) and schedule.due(step, end_of_epoch=False):
                checkpoint(checkpoints.Position(epoch, batch_index, step))
        with blamed("weightings", type(weighting), "end_epoch"):
            weighting.end_epoch(epoch)
        if schedule.due(step, end_of_epoch=True):  # before the evaluation: a stop during it loses no training
            checkpoint(checkpoints.Position(epoch + 1, 0, step))
        result = evaluate(epoch + 1)
    if dist.main:
        result.epoch = None
    return model, signal, result
