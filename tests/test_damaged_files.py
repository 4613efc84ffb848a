"""Damaged model files and bad `predict` input: one line, exit code 2, nothing lost (real subprocesses)."""

import json
import shutil

import pytest

from test_cli_errors import assert_usage_error


@pytest.fixture
def model(trained_model, tmp_path):
    """A copy of the session's tiny trained model, free to damage."""
    return shutil.copytree(trained_model, tmp_path / "model")


def test_a_damaged_config_or_weights_file_is_named(cli, model, tmp_path):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "texts.txt").write_text("a fine film\n")
    assert_usage_error(cli("predict", "model", "--input", "texts.txt", "--threshold", "0.5"),
                       "model.safetensors' cannot be read", "train the model again")
    (model / "adaptive_exit.json").write_text('{"num_labels": 2,')
    assert_usage_error(cli("evaluate", "model"), "adaptive_exit.json' is damaged")


def test_a_backbone_directory_with_broken_weights(cli, model):
    backbone = model / "backbone"
    (backbone / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_usage_error(cli("train", "--backbone", str(backbone), "--no-track", "--max-train-samples", "8"),
                       "could not load backbone")


def test_predict_input_faults(cli, model, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("un film très réussi\n".encode("latin-1"))
    assert_usage_error(cli("predict", "model", "--input", "latin1.txt"), "input file 'latin1.txt' is not UTF-8 text")
    lines = [json.dumps({"text": f"film {i}"}) for i in range(4)] + ['{"text": "broken']
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    assert_usage_error(cli("predict", "model", "--input", "rows.jsonl"), "line 5 is not valid JSON")
    (tmp_path / "texts.txt").write_text("a fine film\na dull one\n")
    assert_usage_error(cli("predict", "model", "--input", "texts.txt", "--output", "missing/out.jsonl"),
                       "cannot write --output 'missing/out.jsonl' (No such file or directory)")
    for threshold in ("nan", "1.5"):
        assert_usage_error(cli("predict", "model", "--input", "texts.txt", "--threshold", threshold),
                           f"--threshold {threshold} is outside the range of signal 'entropy' thresholds [-0.01, 1.01]")


def test_predict_never_prints_nan(cli, model, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    weights = {k: v.fill_(float("nan")) if k.startswith("heads.") else v for k, v in weights.items()}
    save_file(weights, str(model / "model.safetensors"))
    (tmp_path / "texts.txt").write_text("a fine film\n")
    done = cli("predict", "model", "--input", "texts.txt", "--threshold", "1")
    assert_usage_error(done, "the model's answers are not finite numbers")
    assert "NaN" not in done.stdout
