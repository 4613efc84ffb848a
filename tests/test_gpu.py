"""The CUDA path: bf16 and fp16 training, then evaluate and early exit on the GPU (skipped without CUDA).

A tiny random-weight BERT built from a config (no download), with the offline MiniLM tokenizer.
"""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from adaptive_exit import MultiExitModel, simulate_exits
from adaptive_exit.aliases import resolve_source
from adaptive_exit.early_exit import early_exit_forward
from adaptive_exit.inference import model_signal
from adaptive_exit.precision import Precision

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_and_early_exit_on_cuda(cli, env, tmp_path, tiny_bert, precision):
    # 640 samples at batch 32: 20 steps
    done = cli("train", "--backbone", str(tiny_bert), "--max-train-samples", "640", "--max-eval-samples", "200",
               "--batch-size", "32", "--lr", "1e-3", "--max-length", "32", "--precision", precision,
               "--output-dir", "model")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"training on cuda in {precision}" in done.stderr
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert run.data.params["train.precision"] == precision

    done = cli("evaluate", "model", "--json", "--no-track", "--precision", precision)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(done.stdout)["per_exit_metric"]) == 3
    (tmp_path / "texts.txt").write_text("a fine film\nslow and dull\n")
    done = cli("predict", "model", "--input", "texts.txt", "--threshold", "0.5", "--precision", precision)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 2

    model = MultiExitModel.from_pretrained(tmp_path / "model").cuda()
    signal = model_signal(model).cuda()
    texts = ["a fine film", "slow and dull", "an utterly gripping drama", "bad", "fine", "a long, long story"] * 6
    batch = model.tokenizer(texts, padding=True, return_tensors="pt").to("cuda")
    runs_in = Precision(precision, "cuda")
    with torch.no_grad():
        with runs_in.autocast():
            outputs = model(batch["input_ids"], batch["attention_mask"])
        scores = signal.score(outputs).double().cpu()  # in fp32, as early exit scores
        threshold = float(scores[0].median())
        expected = simulate_exits(scores, torch.tensor([threshold]), signal.exit_when)[0]
        with runs_in.autocast():
            got = early_exit_forward(model, batch["input_ids"], batch["attention_mask"], None, signal, threshold)
    assert torch.equal(got.exit_index.cpu(), expected)
