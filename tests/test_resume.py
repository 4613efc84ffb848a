"""Checkpoints and `train --resume`: a training killed with SIGKILL continues bit-exactly into the same MLflow run."""

import math
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from adaptive_exit import checkpoints
from adaptive_exit.errors import UsageError
from conftest import TINY

from contract_helpers import site  # noqa: F401 (fixture)
from test_cli_errors import assert_usage_error

RUN = [*TINY, "--epochs", "2", "--weighting", "cosee", "--max-train-samples", "256", "--max-eval-samples", "32",
       "--checkpoint-every", "2", "--precision", "fp32"]


def test_checkpoints_are_written_whole_and_the_last_two_kept(tmp_path, capsys):
    for step in (2, 4, 6):
        checkpoints.write(tmp_path, {"position": {"epoch": 0, "batch": step, "step": step}, "x": torch.ones(step)},
                          step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000006.pt"]
    (tmp_path / "checkpoints" / ".step-00000008.pt.tmp").write_bytes(b"half a file")  # a write cut short
    assert checkpoints.newest(tmp_path)["position"]["step"] == 6
    newest = tmp_path / "checkpoints" / "step-00000006.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # the disk lost its end
    state = checkpoints.newest(tmp_path)
    assert state["position"]["step"] == 4 and torch.equal(state["x"], torch.ones(4))
    assert "step-00000006.pt cannot be read" in capsys.readouterr().err
    with pytest.raises(UsageError, match="holds no checkpoint to resume from"):
        checkpoints.newest(tmp_path / "elsewhere")


def test_random_generators_come_back_exactly():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = checkpoints.rng_state()
    drawn = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(4), np.random.seed(4), torch.manual_seed(4)
    checkpoints.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert drawn[:2] == again[:2] and torch.equal(drawn[2], again[2])


def test_only_epochs_and_checkpoint_frequency_may_change():
    config = {"train": {"epochs": 3, "lr": 5e-5, "checkpoint_every": 2}, "signal": {"name": "entropy"}}
    state = {"config": config, "world_size": 1, "position": {"epoch": 1, "batch": 3, "step": 11}, "path": "ck.pt"}
    checkpoints.check_resumable(state, {**config, "train": {**config["train"], "epochs": 5, "checkpoint_every": 0}}, 1)
    with pytest.raises(UsageError, match=r"train.lr: 5e-05 then, 0.001 now.*only --epochs and --checkpoint-every"):
        checkpoints.check_resumable(state, {**config, "train": {**config["train"], "lr": 1e-3}}, 1)
    with pytest.raises(UsageError, match="written by 1 processes, this run has 2"):
        checkpoints.check_resumable(state, config, 2)
    with pytest.raises(UsageError, match="resume with --epochs 2 or more"):
        checkpoints.check_resumable(state, {**config, "train": {**config["train"], "epochs": 1}}, 1)


def test_a_field_added_since_a_config_was_written_counts_as_its_default_then():
    then = {"data": {"dataset": "csv"}, "signal": {"name": "change", "options": {}}}
    now = {"data": {"dataset": "csv", "task": None}, "signal": {"name": "change", "options": {"new_option": 1}}}
    assert checkpoints.differences(then, now) == ""
    regression = {**now, "data": {"dataset": "csv", "task": "regression"}}
    assert checkpoints.differences(then, regression) == "data.task: None then, 'regression' now"


def test_the_schedule_counts_steps_or_minutes():
    assert [s for s in range(1, 8) if checkpoints.Schedule(3).due(s, False)] == [3, 6]
    assert checkpoints.Schedule(3).due(4, end_of_epoch=True)
    assert not checkpoints.Schedule(0).due(4, end_of_epoch=True)
    by_time = checkpoints.Schedule(None, minutes=1 / 600)  # 0.1 s
    assert not by_time.due(1, False)
    time.sleep(0.15)
    assert by_time.due(2, False)
    by_time.written()
    assert not by_time.due(3, False)


def test_cosee_state_round_trips():
    from adaptive_exit_cosee import Cosee

    from adaptive_exit.signals import Entropy

    signal = Entropy(Entropy.Options(), num_exits=3, hidden_size=4, num_labels=2)
    first = Cosee(Cosee.Options(), signal=signal, num_exits=3, total_steps=10)
    first.threshold_range, first._seen = (0.2, 0.9), [0.1, math.inf]
    second = Cosee(Cosee.Options(), signal=signal, num_exits=3, total_steps=10)
    second.load_state_dict(first.state_dict())
    assert second.threshold_range == (0.2, 0.9) and second._seen == [0.1, math.inf]


def test_batches_resume_inside_an_epoch():
    from adaptive_exit.data import TrainBatches

    batches = TrainBatches([5, 3, 8, 1, 9, 2, 7], batch_size=2, seed=1)
    batches.set_epoch(1)
    whole = list(batches)
    batches.set_epoch(1, start=2)
    assert list(batches) == whole[2:] and len(batches) == len(whole) - 2


def test_non_finite_gradients_stop_training_before_the_step(monkeypatch):
    from adaptive_exit.backbones import HuggingFace
    from adaptive_exit.config import RunConfig
    from adaptive_exit.errors import DivergedError
    from adaptive_exit.model import MultiExitModel
    from adaptive_exit.signals import Entropy
    from adaptive_exit.training import Trainable, make_optimizer, train_step
    from adaptive_exit.weighting import Weighting, WeightingLoss

    class SqrtAtZero(Weighting):
        """A finite loss (0) whose gradient is not: d√x/dx at 0 is infinite."""

        def loss(self, outputs, labels, step):
            return WeightingLoss(torch.sqrt(outputs.logits.sum() * 0.0), {"term": 0.0})

    torch.manual_seed(0)
    model = MultiExitModel(HuggingFace().load("minilm-l6", 1), {"num_labels": 2, "pooling": "mean", "dropout": 0.1})
    signal = Entropy(Entropy.Options(), num_exits=1, hidden_size=model.encoder.hidden_size, num_labels=2)
    optimizer = make_optimizer(model, signal, RunConfig())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = model.tokenizer(["a film", "another film"], padding=True, return_tensors="pt")
    batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
             "labels": torch.tensor([0, 1])}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weighting = SqrtAtZero(signal=signal, num_exits=1, total_steps=5)
    with pytest.raises(DivergedError, match=r"diverged at step 4: loss 0, gradient norm nan \(term 0\)"):
        train_step(Trainable(model, signal), model, signal, weighting, optimizer, scheduler, batch, 3, 1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the step was not applied


def wait_for_checkpoint(process, directory, log, timeout=300):
    deadline = time.time() + timeout
    while not list(directory.glob("step-*.pt")):
        assert process.poll() is None, "the training ended before its first checkpoint: " + log.read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def kill_tree(pid):
    """SIGKILL a process and every descendant (torchrun starts its workers in sessions of their own)."""
    import os
    import signal
    from pathlib import Path

    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def final_metrics(client, run):
    return {key: value for key, value in client.get_run(run.info.run_id).data.metrics.items()
            if key == "auc" or key.startswith("exit_") or key.startswith("accuracy_at")}


def killed_and_resumed(launch, env, tmp_path, run_args, steps, check_refusal=False):
    """Train uninterrupted into `whole`; train into `cut`, SIGKILL it (all its processes) after its first checkpoint,
    resume it; check that both models are equal bit for bit, and that `cut` is one FINISHED MLflow run with every
    step logged."""
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    def run(*args):
        return subprocess.run([*launch, "train", *run_args, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)

    whole = run("--output-dir", "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not (tmp_path / "whole" / "checkpoints").exists()  # deleted once the model is saved
    log = tmp_path / "cut.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([*launch, "train", *run_args, "--output-dir", "cut"], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    wait_for_checkpoint(process, tmp_path / "cut" / "checkpoints", log)
    kill_tree(process.pid)
    process.wait(timeout=60)
    assert not (tmp_path / "cut" / "adaptive_exit.json").exists()
    if check_refusal:
        assert_usage_error(run("--output-dir", "cut", "--resume", "--lr", "1e-4"), "train.lr: 5e-05 then, 0.0001 now")
    resumed = run("--output-dir", "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "adaptive-exit: resuming from" in resumed.stderr

    expected, got = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "cut"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bit for bit
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = {r.data.params["output_dir"]: r for r in client.search_runs([e.experiment_id for e in
                                                                         client.search_experiments()])}
    assert sorted(runs) == ["cut", "whole"]  # the resumed training went on in the run it started
    cut = runs["cut"]
    assert cut.info.status == "FINISHED" and "--resume" in cut.data.tags["adaptive_exit.resumed"]
    assert final_metrics(client, cut) == final_metrics(client, runs["whole"]) != {}  # the same final evaluation
    assert sorted({m.step for m in client.get_metric_history(cut.info.run_id, "loss")}) == list(range(1, steps + 1))
    assert sorted({m.step for m in client.get_metric_history(cut.info.run_id, "auc")}) == [0, 1, 2]


@pytest.mark.slow  # about 110 s on 2 cores: three trainings; the evaluation-stop test below resumes in the default run
def test_a_killed_cosee_training_resumes_bit_exactly_into_the_same_run(env, tmp_path):
    """COSEE keeps state of its own (the threshold range): 2 epochs of 16 steps, a checkpoint every 2."""
    killed_and_resumed([sys.executable, "-m", "adaptive_exit"], env, tmp_path, RUN, steps=32, check_refusal=True)


def test_resume_refuses_what_it_cannot_continue(cli, tmp_path):
    from adaptive_exit.checkpoints import write

    write(tmp_path / "cut", {"position": {"epoch": 0, "batch": 2, "step": 2}}, 2)
    assert_usage_error(cli("train", *RUN, "--output-dir", "cut"), "holds the checkpoints of an unfinished training",
                       "add --resume")
    assert_usage_error(cli("train", *RUN, "--output-dir", "empty", "--resume"), "holds no checkpoint to resume from")
    assert_usage_error(cli("train", *RUN, "--resume"), "--resume needs the --output-dir")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "adaptive_exit.json").write_text("{}")
    assert_usage_error(cli("train", *RUN, "--output-dir", "done", "--resume"), "holds a finished model")


STOPPER = '''
import os
import signal

from adaptive_exit import hookimpl
from adaptive_exit.signals import Entropy


class StopAtFirstSweep(Entropy):
    """Entropy, but the first time it scores the whole evaluation split (32 samples) it sends SIGTERM to its process,
    unless the file in $STOP_FLAG exists (which it then creates)."""

    name = "stop-at-first-sweep"

    def score(self, outputs):
        flag = os.environ["STOP_FLAG"]
        if outputs.logits.shape[1] == 32 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(outputs)


@hookimpl
def register_signals(register):
    register(StopAtFirstSweep)
'''


def test_a_stop_during_the_evaluation_resumes_at_the_end_of_that_epoch(env, tmp_path, site):
    """SIGTERM while epoch 1 is being evaluated: the checkpoint written before the evaluation holds the whole epoch,
    --resume evaluates it again and trains epoch 2, and the model equals the uninterrupted run's bit for bit."""
    from safetensors.torch import load_file

    site.add("adaptive-exit-stopper", "stopper", STOPPER)
    args = [*TINY, "--epochs", "2", "--max-train-samples", "64", "--max-eval-samples", "32", "--precision", "fp32",
            "--signal", "stop-at-first-sweep", "--checkpoint-every", "1000", "--no-track"]

    def run(*extra, flag):
        return subprocess.run([sys.executable, "-m", "adaptive_exit", "train", *args, *extra], cwd=tmp_path,
                              env={**env, **site.pythonpath, "STOP_FLAG": str(tmp_path / flag)}, capture_output=True,
                              text=True, timeout=600)

    (tmp_path / "never").touch()
    whole = run("--output-dir", "whole", flag="never")
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = run("--output-dir", "cut", flag="stop")
    assert stopped.returncode == 143 and "adaptive-exit: terminated" in stopped.stderr, stopped.stderr[-3000:]
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step-00000004.pt"]  # epoch 1's end
    resumed = run("--output-dir", "cut", "--resume", flag="stop")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "(epoch 2, step 4)" in resumed.stderr
    expected, got = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "cut"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
