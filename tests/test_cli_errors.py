"""Bad input gives one line on stderr, exit code 2 and no traceback (real subprocesses)."""

import pytest


def assert_usage_error(done, *fragments):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert lines and lines[-1].startswith("adaptive-exit: error:"), done.stderr[-2000:]
    error = [line for line in lines if line.startswith("adaptive-exit: error:")]
    assert len(error) == 1
    for fragment in fragments:
        assert fragment in error[0], error[0]


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,sentiment\n" + "great film,pos\nawful film,neg\nfine,pos\ndull,neg\n" * 2)
    return path


def test_unknown_signal_lists_available(cli):
    assert_usage_error(cli("train", "--signal", "nope"), "unknown signal 'nope'", "entropy", "energy", "maxprob")


def test_unknown_weighting(cli):
    assert_usage_error(cli("train", "--weighting", "nope"), "unknown weighting 'nope'", "cosee", "uniform")


def test_unknown_dataset(cli):
    assert_usage_error(cli("train", "--dataset", "nope"), "unknown dataset 'nope'", "movie-reviews", "snli")


def test_invalid_flag_value_names_the_field(cli):
    assert_usage_error(cli("train", "--lr", "-1"), "train.lr", "greater than 0")


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_learning_rate_and_plugin_option(cli, value):
    assert_usage_error(cli("train", "--head-lr", value), "train.head_lr", "finite number")
    # nan already fails the option's own bound (>= 0); inf passes it and meets the finite check
    assert_usage_error(cli("train", "--weighting", "cosee", "--beta0", value), "invalid value for --beta0",
                       "finite number" if value == "inf" else "greater than or equal to 0")


def test_invalid_yaml_value_names_the_field(cli, tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  epochs: zero\n")
    assert_usage_error(cli("train", "--config", "run.yaml"), "train.epochs")


def test_unknown_yaml_field(cli, tmp_path):
    (tmp_path / "run.yaml").write_text("model:\n  layers: 3\n")
    assert_usage_error(cli("train", "--config", "run.yaml"), "model.layers", "unknown field")


def test_yaml_section_of_the_wrong_shape(cli, tmp_path):
    (tmp_path / "run.yaml").write_text("signal: entropy\n")
    assert_usage_error(cli("train", "--config", "run.yaml", "--signal", "energy"), "invalid value for signal")


def test_invalid_plugin_option_names_the_field(cli):
    assert_usage_error(cli("train", "--weighting", "cosee", "--beta0", "much"), "invalid value for --beta0")


def test_option_of_another_plugin(cli):
    assert_usage_error(cli("train", "--weighting", "uniform", "--beta0", "1"), "--beta0", "cosee")


def test_missing_data_file(cli):
    assert_usage_error(cli("train", "--dataset", "csv", "--train-file", "missing.csv"), "missing.csv", "does not exist")


def test_missing_label_column(cli, csv_file):
    assert_usage_error(cli("train", "--dataset", "csv", "--train-file", str(csv_file)), "'label'", "sentiment")


def test_unreachable_model_hub(cli, csv_file):
    done = cli("train", "--dataset", "csv", "--train-file", str(csv_file), "--label-column", "sentiment",
               "--backbone", "some-org/some-encoder", "--no-track")
    assert_usage_error(done, "could not load backbone 'some-org/some-encoder'", "minilm-l6")


def test_unreachable_dataset_hub(cli):
    assert_usage_error(cli("train", "--dataset", "glue/sst2", "--no-track"), "glue/sst2", "dataset hub")


def test_missing_model_dir(cli):
    assert_usage_error(cli("evaluate", "no-such-dir"), "not a model directory")


@pytest.mark.parametrize(("rows", "fragments"), [
    ("great film,pos\nawful film,neg\n ,pos\n", ("train file", "row 3 has an empty 'text' cell")),
    ("great film,pos\nawful film,\nfine,pos\nbad,\n", ("rows 2, 4 have no label", "--drop-missing-labels")),
    ("great film,1\nawful film,0.5\n", ("row 2 has a label that is not a whole number (0.5)", "class labels")),
])
def test_bad_cells_of_a_local_file(cli, tmp_path, rows, fragments):
    (tmp_path / "train.csv").write_text("text,label\n" + rows)
    assert_usage_error(cli("train", "--dataset", "csv", "--train-file", "train.csv", "--no-track"), *fragments)


def test_label_only_in_the_test_file(cli, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "test.csv").write_text("text,label\nmeh,neutral\n")
    done = cli("train", "--dataset", "csv", "--train-file", "train.csv", "--test-file", "test.csv", "--no-track")
    assert_usage_error(done, "label 'neutral' appears in the test file but not in the train file")


def test_rows_without_a_label_left_out_on_request(tmp_path, capsys):
    from adaptive_exit.config import DataConfig
    from adaptive_exit.data import load_task

    (tmp_path / "train.csv").write_text("text,label\ngood,1\nbad,\nfine,1.0\nawful,0\n")
    (tmp_path / "test.csv").write_text("text,label\nmeh,0\n")
    config = DataConfig(dataset="csv", train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "train.csv"),
                        test_file=str(tmp_path / "test.csv"), drop_missing_labels=True)
    task = load_task(config)
    assert task.splits["train"]["text"] == ["good", "fine", "awful"]
    assert task.splits["train"]["label"] == [1, 1, 0]  # a whole-number float is a class
    assert task.label_names == ["0", "1"]
    assert "left out 1 row(s) without a label" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_evaluate_thresholds_must_be_finite(cli, trained_model, value):
    assert_usage_error(cli("evaluate", str(trained_model), "--thresholds", "0.5", value, "--no-track"),
                       "invalid value for --thresholds: each should be a finite number", value)


def test_a_training_file_with_one_class_is_refused_before_the_work(cli, tmp_path):
    path = tmp_path / "one-class.csv"
    path.write_text("text,sentiment\n" + "".join(f"review number {i},pos\n" for i in range(40)))
    done = cli("train", "--dataset", "csv", "--train-file", str(path), "--label-column", "sentiment", "--no-track",
               "--num-layers", "1")
    assert_usage_error(done, f"the training split of training file '{path}' holds only the class 'pos'",
                       "at least two classes")
    assert "epoch 1/" not in done.stderr


def test_a_tiny_validation_split_is_a_warning(cli, tmp_path):
    train, validation = tmp_path / "train.csv", tmp_path / "validation.csv"
    rows = [f"a {'fine' if i % 2 else 'dull'} film number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(48)]
    train.write_text("text,sentiment\n" + "".join(rows[:40]))
    validation.write_text("text,sentiment\n" + "".join(rows[40:]))
    done = cli("train", "--dataset", "csv", "--train-file", str(train), "--validation-file", str(validation),
               "--test-file", str(validation), "--label-column", "sentiment", "--no-track", "--num-layers", "1",
               "--max-length", "16", "--output-dir", "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"adaptive-exit: warning: the validation split of validation file '{validation}' has 8 sample(s): one "
            f"sample moves the accuracy by 12 points") in done.stderr
