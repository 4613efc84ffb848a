"""Faster training: length-grouped batches, mixed precision, the training benchmark."""

import json

import pytest
import torch
from datasets import Dataset
from mlflow.tracking import MlflowClient

from adaptive_exit import ExitOutputs, MultiExitModel
from adaptive_exit.backbones import HuggingFace
from adaptive_exit.config import RunConfig
from adaptive_exit.data import TrainBatches, make_loader
from adaptive_exit.errors import UsageError
from adaptive_exit.evaluation import collect_outputs, split_outputs
from adaptive_exit.precision import (Precision, cpu_description, cpu_has_native_bf16, cpu_line, default_device,
                                     resolve_precision)
from adaptive_exit.signals import Energy, Entropy, MaxProb
from adaptive_exit.throughput import chosen_configs, representative_batches
from adaptive_exit.training import Trainable, make_optimizer, train_step
from adaptive_exit_cosee import Cosee

CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}

LENGTHS = [5 + (7 * i) % 60 for i in range(1000)]


def padded_tokens(batches, lengths=LENGTHS):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("grouped", [True, False])
def test_batches_cover_every_index_once_per_epoch(grouped):
    batches = TrainBatches(LENGTHS, 32, seed=1, group_by_length=grouped)
    for epoch in range(2):
        batches.set_epoch(epoch)
        seen = [i for batch in batches for i in batch]
        assert sorted(seen) == list(range(1000))
        assert len(batches) == len(list(batches)) == 32  # 31 full batches and one of 8
        assert sorted(len(b) for b in batches)[:2] == [8, 32]


def test_grouped_batches_are_deterministic_for_a_seed_and_differ_across_epochs():
    def order(seed, epoch):
        batches = TrainBatches(LENGTHS, 32, seed=seed)
        batches.set_epoch(epoch)
        return list(batches)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_grouped_batches_are_padded_far_less_and_still_random_in_order():
    grouped, random = list(TrainBatches(LENGTHS, 32, seed=1)), list(TrainBatches(LENGTHS, 32, 1, False))
    real = sum(LENGTHS)
    assert padded_tokens(random) / real > 1.5
    assert padded_tokens(grouped) / real < 1.05
    # within a mega-batch the batches are sorted longest first; shuffled, they are not in length order
    longest = [max(LENGTHS[i] for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


@pytest.mark.parametrize("grouped", [True, False])
def test_two_ranks_get_disjoint_equal_shares_of_similar_length(grouped):
    ranks = [TrainBatches(LENGTHS, 16, seed=3, group_by_length=grouped, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        flat = [{i for b in share for i in b} for share in shares]
        assert flat[0].isdisjoint(flat[1]) and flat[0] | flat[1] == set(range(1000))
        assert len(shares[0]) == len(shares[1]) == len(ranks[0])
        assert [len(b) for b in shares[0]] == [len(b) for b in shares[1]]
        if grouped:  # the two ranks' batches of one step come from the same stretch of the sorted order
            gaps = [abs(max(LENGTHS[i] for i in a) - max(LENGTHS[i] for i in b)) for a, b in zip(*shares)]
            assert max(gaps) <= 2


def test_ranks_pad_an_odd_count_to_the_same_number_of_samples():
    ranks = [list(TrainBatches(LENGTHS[:7], 2, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    sizes = [[len(b) for b in share] for share in ranks]
    assert sizes[0] == sizes[1] and sum(sizes[0]) == 4
    assert {i for share in ranks for b in share for i in b} == set(range(7))


def test_representative_batches_take_evenly_spaced_lengths():
    lengths = [10, 20, 30, 40, 50]
    batches = [[4], [0], [2], [1], [3]]
    assert representative_batches(batches, lengths, 3) == [[0], [2], [4]]
    assert representative_batches(batches, lengths, 1) == [[2]]
    assert len(representative_batches(batches, lengths, 9)) == 5


def test_auto_precision_follows_the_cpu_flags(tmp_path):
    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_has_native_bf16(native) and not cpu_has_native_bf16(plain)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    encoder = HuggingFace().load("minilm-l6", 2)
    return MultiExitModel(encoder, {"num_labels": 2, "pooling": "mean", "dropout": 0.1})


def batch_of(model, texts, labels):
    tokens = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
            "labels": torch.tensor(labels)}


def test_bf16_training_of_a_real_model_lowers_the_loss(tiny):
    model = tiny
    signal = Entropy(Entropy.Options(), num_exits=2, hidden_size=model.encoder.hidden_size, num_labels=2)
    weighting = Cosee(Cosee.Options(preset="paper"), signal=signal, num_exits=2, total_steps=12)
    optimizer = make_optimizer(model, signal, RunConfig())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = batch_of(model, ["a fine, moving film", "dull and far too long", "great fun", "bad acting throughout",
                             "a quiet triumph", "a mess"], [1, 0, 1, 0, 1, 0])
    precision = Precision("bf16")
    model.train()
    losses = [train_step(Trainable(model, signal), model, signal, weighting, optimizer, scheduler, batch, step, 1.0,
                         precision)["cosee_ce"] for step in range(12)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert all(p.dtype == torch.float32 for p in model.parameters())  # parameters stay fp32


def test_exit_outputs_and_signals_are_fp32_and_finite_under_autocast(tiny):
    model = tiny.eval()
    batch = batch_of(model, ["a fine film", "dull", "an utterly gripping, beautifully acted drama"], [1, 0, 1])
    with torch.no_grad(), Precision("bf16").autocast():
        out = model(batch["input_ids"], batch["attention_mask"])
    assert out.logits.dtype == out.pooled.dtype == torch.float32
    for cls in (Entropy, MaxProb, Energy):
        scores = cls(cls.Options(), num_exits=2, hidden_size=1, num_labels=2).score(
            ExitOutputs(out.logits * 1000, out.pooled))
        assert scores.dtype == torch.float32 and bool(torch.isfinite(scores).all()), cls.name


def test_split_outputs_are_in_the_split_order(tiny):
    model = tiny.eval()
    texts = ["short", "a much, much longer sentence about a film that goes on", "mid length text", "ok"]
    rows = [{**model.tokenizer(t), "label": i % 2} for i, t in enumerate(texts)]
    in_order, labels = collect_outputs(model, make_loader(rows, model.tokenizer, 4))
    by_length, sorted_labels = split_outputs(model, Dataset.from_list(rows), 2)
    assert torch.equal(labels, sorted_labels)
    assert torch.allclose(in_order.logits, by_length.logits, atol=1e-4)


def test_train_says_and_records_its_precision(trained_model):
    expected = resolve_precision("auto", default_device())
    config = json.loads((trained_model / "adaptive_exit.json").read_text())
    assert config["run"]["train"]["precision"] == expected
    assert config["run"]["train"]["group_by_length"] is True
    client = MlflowClient(tracking_uri=f"sqlite:///{trained_model.parent / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["train.precision"] == expected


def test_bf16_evaluation_is_within_a_point_of_fp32(cli, trained_model):
    per_exit = {}
    for precision in ("fp32", "bf16"):
        done = cli("evaluate", str(trained_model), "--json", "--no-track", "--precision", precision,
                   "--max-eval-samples", "400")
        assert done.returncode == 0, done.stderr[-2000:]
        per_exit[precision] = json.loads(done.stdout)["per_exit_metric"]
    assert per_exit["fp32"] == pytest.approx(per_exit["bf16"], abs=0.01)


def test_fp16_on_cpu_is_a_one_line_error(cli):
    done = cli("train", "--precision", "fp16", "--no-track", extra_env=CPU_ONLY)
    assert done.returncode == 2
    assert done.stderr.strip() == "adaptive-exit: error: --precision fp16 needs a CUDA GPU; on a CPU use bf16 (or auto)"


def test_fp32_random_training_and_the_training_benchmark_run(cli):
    done = cli("train", "--num-layers", "1", "--max-length", "16", "--max-train-samples", "32", "--max-eval-samples",
               "16", "--batch-size", "16", "--precision", "fp32", "--no-group-by-length", "--no-track",
               "--output-dir", "model", extra_env=CPU_ONLY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training on cpu in fp32, batches random" in done.stderr
    small = ["--num-layers", "1", "--max-length", "16", "--max-steps", "2", "--repeats", "2", "--warmup", "1",
             "--batch-size", "8", "--json"]
    native = cpu_has_native_bf16() or default_device().type == "cuda"
    for precision in ("auto",) if native else ("auto", "bf16"):  # auto skips emulated bf16; bf16 times it anyway
        done = cli("benchmark-train", *small, "--precision", precision)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        both = native or precision == "bf16"
        assert set(report["configs"]) == ({"fp32-random", "fp32-grouped", "bf16-random", "bf16-grouped"} if both
                                          else {"fp32-random", "fp32-grouped"})
        assert report["skipped"] == ([] if both else ["bf16-random", "bf16-grouped"])
        assert ("no native bf16" in done.stderr) == (not native) and "timing training steps" in done.stderr
        for row in report["configs"].values():
            assert row["samples_per_second"] > 0 and row["real_tokens_per_second"] <= row["padded_tokens_per_second"]
        best = "bf16-grouped" if both else "fp32-grouped"
        assert report["speedup_config"] == best
        assert report["speedup"] == pytest.approx(report["configs"][best]["samples_per_second"]
                                                  / report["configs"]["fp32-random"]["samples_per_second"])
        assert report["cpu"]["native_bf16"] == cpu_has_native_bf16()


def test_the_training_benchmark_skips_bf16_on_a_cpu_without_it(tmp_path):
    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n")
    plain.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2\n")
    fp32, bf16 = ["fp32-random", "fp32-grouped"], ["fp32-random", "fp32-grouped", "bf16-random", "bf16-grouped"]
    names, note = chosen_configs("auto", "cpu", plain)
    assert names == fp32 and "no native bf16" in note and "skipped" in note and "--precision bf16" in note
    names, note = chosen_configs("bf16", "cpu", plain)
    assert names == bf16 and "emulated" in note
    assert chosen_configs("auto", "cpu", native) == (bf16, None)
    assert chosen_configs("bf16", "cpu", native) == (bf16, None)
    assert chosen_configs("fp32", "cpu", native) == (fp32, None)
    assert cpu_description(native) == {"model": "Some Xeon", "flags": ["avx2", "avx512f", "amx_tile", "amx_bf16"],
                                       "native_bf16": True}
    assert cpu_description(plain) == {"model": "AMD EPYC", "flags": ["avx2"], "native_bf16": False}
    assert cpu_line(cpu_description(plain)) == "CPU: AMD EPYC (avx2; bf16 emulated)"
    with pytest.raises(UsageError, match="unknown precision 'fp16'"):
        chosen_configs("fp16", "cpu", plain)
