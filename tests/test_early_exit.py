"""Real early exit (samples leave the batch) gives exactly what the all-exits simulation says."""

import shutil

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from adaptive_exit import MultiExitModel, Signal, simulate_exits
from adaptive_exit.backbones import HuggingFace
from adaptive_exit.early_exit import early_exit_forward, early_exit_stream
from adaptive_exit.precision import Precision
from adaptive_exit.signals import Energy, Entropy, MaxProb


class Agreement(Signal):
    """Needs history: how many exits in a row (up to this one) predict the same class."""

    name = "agreement-test"
    exit_when = ">="

    def score(self, outputs):
        predictions = outputs.logits.argmax(-1)
        counts = [torch.zeros_like(predictions[0], dtype=torch.float32)]
        for i in range(1, predictions.shape[0]):
            counts.append(torch.where(predictions[i] == predictions[i - 1], counts[-1] + 1, torch.zeros_like(counts[-1])))
        return torch.stack(counts)

    def thresholds(self, scores, count=200):
        return torch.arange(0, self.num_exits + 1, dtype=torch.float64)


class Learned(Signal):
    """Has trainable parameters: a sigmoid of a linear map of the pooled state (BERxiT-style)."""

    name = "learned-test"
    exit_when = ">"
    uses_history = False

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        torch.manual_seed(3)
        self.head = torch.nn.Linear(self.hidden_size, 1)

    def score(self, outputs):
        return torch.sigmoid(self.head(outputs.pooled)).squeeze(-1)


class MarginOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    encoder = HuggingFace().load("minilm-l6", 3)
    model = MultiExitModel(encoder, {"pooling": "mean", "dropout": 0.1, "num_labels": 3}).eval()
    for head in model.heads:  # spread the exits' confidence so that thresholds separate samples
        head.classifier.weight.data *= 40
    return model


@pytest.fixture(scope="module")
def batch(model):
    texts = ["ok", "no.", "an utterly gripping film " * 30, "dull", "it is what it is, i suppose, more or less",
             "the acting is wooden but the score is lovely and the ending surprised me " * 3, "fine", "meh"] * 5
    return model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")


class Margin(Signal):
    """The third-party example plugin's formula (top-1 minus top-2 probability), defined here so no install is needed."""

    name = "margin-test"
    exit_when = ">"
    Options = MarginOptions
    uses_history = False

    def score(self, outputs):
        top = torch.softmax(outputs.logits.float() / self.options.temperature, -1).topk(2, -1).values
        return top[..., 0] - top[..., 1]


SIGNALS = {"entropy": Entropy, "maxprob": MaxProb, "energy": Energy, "agreement": Agreement, "learned": Learned,
           "margin": Margin}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("signal_name", SIGNALS)
def test_early_exit_matches_simulation(model, batch, signal_name, precision):
    kwargs = {"num_exits": model.num_exits, "hidden_size": model.encoder.hidden_size, "num_labels": 3}
    signal = SIGNALS[signal_name](**kwargs).eval()
    runs_in = Precision(precision)
    with torch.no_grad():
        with runs_in.autocast():
            full = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        scores = signal.score(full)
    thresholds = signal.thresholds(scores.double(), 12)
    simulated = simulate_exits(scores, thresholds, signal.exit_when)
    predictions = full.logits.argmax(-1)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() <= 4 and lengths.max() >= 100
    seen_exits = set()
    for k, threshold in enumerate(thresholds.tolist()):
        for size in (1, 7, 32):
            for start in range(0, len(lengths), size):
                rows = slice(start, start + size)
                width = int(lengths[rows].max())
                with runs_in.autocast():
                    out = early_exit_forward(model, batch["input_ids"][rows, :width],
                                             batch["attention_mask"][rows, :width],
                                             batch["token_type_ids"][rows, :width], signal, threshold)
                expected = simulated[k, rows]
                assert torch.equal(out.exit_index, expected), (threshold, size, start)
                assert torch.equal(out.logits.argmax(-1), predictions[:, rows].gather(0, expected[None])[0])
                seen_exits.update(expected.tolist())
        # a stream of batches of 5, every layer call refilled to 7: calls merge and split the batches
        stream = [{key: batch[key][start:start + 5, :int(lengths[start:start + 5].max())] for key in batch}
                  for start in range(0, len(lengths), 5)]
        with runs_in.autocast():
            out = early_exit_stream(model, stream, signal, threshold, 7)
        assert torch.equal(out.exit_index, simulated[k]), (threshold, "stream")
        assert torch.equal(out.logits.argmax(-1), predictions.gather(0, simulated[k][None])[0])
    assert 0 in seen_exits and len(seen_exits) >= 2  # samples left early and samples went on


def test_no_samples_give_an_empty_answer_and_an_empty_batch_in_a_stream_changes_nothing(model, batch):
    signal = Entropy(num_exits=model.num_exits, hidden_size=model.encoder.hidden_size, num_labels=3).eval()
    none = early_exit_forward(model, batch["input_ids"][:0], batch["attention_mask"][:0], batch["token_type_ids"][:0],
                              signal, 0.5)
    assert none.logits.shape == (0, 3) and none.exit_index.shape == (0,)
    rows = [slice(0, 3), slice(0, 0), slice(3, 8)]
    with_empty = early_exit_stream(model, [{k: v[r] for k, v in batch.items()} for r in rows], signal, 0.5, 4)
    alone = early_exit_stream(model, [{k: v[:8] for k, v in batch.items()}], signal, 0.5, 4)
    assert torch.equal(with_empty.exit_index, alone.exit_index) and with_empty.exit_index.shape == (8,)
    assert torch.equal(with_empty.logits.argmax(-1), alone.logits.argmax(-1))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        early_exit_stream(model, [batch], signal, 0.5, 0)


@pytest.fixture
def model_copy(trained_model, tmp_path):
    return shutil.copytree(trained_model, tmp_path / "model")


def test_calibrate_stores_threshold_used_by_predict(cli, model_copy):
    import json

    done = cli("calibrate", str(model_copy), "--target-speedup", "1.5", "--json", "--max-eval-samples", "48")
    assert done.returncode == 0, done.stderr[-2000:]
    stored = json.loads(done.stdout)
    assert stored["speedup"] >= 1.5 and stored["signal"] == "entropy"
    assert json.loads((model_copy / "adaptive_exit.json").read_text())["calibration"] == stored
    model = MultiExitModel.from_pretrained(model_copy)
    answers = model.predict(["a fine film", "dull and far too long", "ok"])
    assert [set(a) for a in answers] == [{"label", "label_id", "probabilities", "exit_layer"}] * 3
    assert all(a["exit_layer"] in (1, 2) and abs(sum(a["probabilities"]) - 1) < 1e-5 for a in answers)
    same = model.predict(["ok", "a fine film"], threshold=stored["threshold"], batch_size=1)
    assert same == [answers[2], answers[0]]


def test_calibrate_logs_to_mlflow(cli, model_copy, env):
    from mlflow.tracking import MlflowClient

    assert cli("calibrate", str(model_copy), "--target-speedup", "1.2", "--max-eval-samples", "48").returncode == 0
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["adaptive_exit.command"] == "calibrate" and run.info.status == "FINISHED"
    assert run.data.metrics["calibrated_speedup"] >= 1.2 and "calibrated_threshold" in run.data.metrics


def test_calibrate_max_drop_python_api(model_copy, env, monkeypatch):
    from adaptive_exit import calibrate_model_dir

    monkeypatch.setenv("ADAPTIVE_EXIT_CACHE", env["ADAPTIVE_EXIT_CACHE"])
    stored = calibrate_model_dir(str(model_copy), max_drop=100, max_samples=48, track=False)
    assert stored["speedup"] == 2.0  # any drop allowed: everybody leaves at exit 1
    strict = calibrate_model_dir(str(model_copy), max_drop=0, max_samples=48, track=False)
    assert strict["metric"] >= strict["full_metric"]


def test_unreachable_target_names_the_range(cli, model_copy):
    done = cli("calibrate", str(model_copy), "--target-speedup", "5", "--no-track", "--max-eval-samples", "48")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "reachable range on this data is 1.00x to 2.00x" in done.stderr


def test_predict_cli_reads_lines_and_jsonl(cli, model_copy, tmp_path):
    import json

    lines = tmp_path / "texts.txt"
    lines.write_text("a fine film\n\ndull and far too long\n")
    done = cli("predict", str(model_copy), "--input", str(lines), "--threshold", "0.5")
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 2 and answers[0]["label"] in ("negative", "positive")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "a fine film"}\n{"text": "dull and far too long"}\n')
    again = cli("predict", str(model_copy), "--input", str(jsonl), "--threshold", "0.5")
    assert [json.loads(line) for line in again.stdout.splitlines()] == answers
    (tmp_path / "empty.txt").write_text("\n\n")
    done = cli("predict", str(model_copy), "--input", str(tmp_path / "empty.txt"), "--threshold", "0.5")
    assert done.returncode == 2 and "no texts to predict" in done.stderr and "Traceback" not in done.stderr
    stored = cli("predict", str(model_copy), "--input", str(lines))  # train stored a threshold for 2x
    assert stored.returncode == 0 and len(stored.stdout.splitlines()) == 2
    no_threshold = cli("predict", str(model_copy), "--input", str(lines), "--signal", "maxprob")
    assert no_threshold.returncode == 2 and "calibrate" in no_threshold.stderr


def test_predict_api_rejects_empty_input(model_copy):
    from adaptive_exit import UsageError

    with pytest.raises(UsageError, match="no texts"):
        MultiExitModel.from_pretrained(model_copy).predict([], threshold=0.5)


def test_benchmark_reports_every_figure(cli, model_copy):
    import json

    done = cli("benchmark", str(model_copy), "--threshold", "0.6", "--json", "--repeats", "1",
               "--max-eval-samples", "16", "--batch-sizes", "1", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    for size in ("1", "4"):
        row = report["batch_sizes"][size]
        assert {"layer_speedup", "flops_ratio", "measured_speedup", "efficiency",
                "overhead_per_visited_layer_ms"} <= set(row)
        assert 1.0 <= row["layer_speedup"] <= 2.0 and row["flops_ratio"] > 0.5
        assert row["efficiency"] == pytest.approx(row["measured_speedup"] / row["layer_speedup"])
    assert set(report["cpu"]) == {"model", "flags", "native_bf16"}
    assert "timing batch size 4" in done.stderr  # the progress bar


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_score_read_on_the_host_meets_the_threshold_as_torch_compares_it(dtype):
    from adaptive_exit.exits import EXIT_RULES, exit_condition, meets_on_host, threshold_as

    threshold = 0.1000000020 if dtype == torch.float32 else 0.5009  # both round to a score below them
    scores = torch.tensor([0.1 if dtype == torch.float32 else 0.5, 0.0, 1.0], dtype=dtype)
    for rule in EXIT_RULES:
        on_host = [EXIT_RULES[rule](score, threshold_as(dtype, threshold)) for score in scores.tolist()]
        assert on_host == exit_condition(scores, threshold, rule).tolist(), rule
        assert meets_on_host(scores, threshold, rule) == on_host, rule
    assert not EXIT_RULES["<"](scores.tolist()[0], threshold_as(dtype, threshold))  # unrounded it would exit
    assert EXIT_RULES["<"](scores.tolist()[0], threshold)
