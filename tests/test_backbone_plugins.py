"""A third-party backbone plugin (tests/plugins/adaptive-exit-distilbert, the worked example of CONTRIBUTING.md):
it passes ``check_backbone`` and trains; each way a backbone plugin can break is one line naming it, exit code 2."""

from __future__ import annotations

import json

import pytest

from adaptive_exit import MultiExitModel
from adaptive_exit.errors import PluginError
from adaptive_exit.testing import check_backbone

from conftest import ROOT, TINY
from contract_helpers import offline, run, site, usage_error  # noqa: F401 (fixtures)
from test_encoders import tiny_encoder_dir

EXAMPLE = (ROOT / "tests" / "plugins" / "adaptive-exit-distilbert" / "adaptive_exit_distilbert.py").read_text()
PLUGIN = "plugin 'distilbert-plugin' (adaptive-exit-distilbert 0.1.0)"


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_encoder_dir(tmp_path_factory, "distilbert")


def install(site, change: str = "") -> None:
    """The example plugin, with ``change`` (a subclass that breaks it) appended and registered instead."""
    source = EXAMPLE
    if change:
        source = source.replace("    register(DistilBertBackbone)\n", "    register(Broken)\n") + change
    site.add("adaptive-exit-distilbert", "distilbert-plugin", source)


def test_the_example_passes_check_backbone(site, distilbert) -> None:
    install(site)
    import adaptive_exit_distilbert

    report = check_backbone(adaptive_exit_distilbert.DistilBertBackbone, distilbert)
    assert report.ok and report.max_abs_diff == 0.0 and len(report.per_layer) == 3


def test_the_example_trains_evaluates_and_predicts(site, distilbert, offline, capsys, tmp_path) -> None:
    install(site)
    code, out, err = run(capsys, "train", *TINY, "--backbone-type", "distilbert-plugin", "--backbone", distilbert,
                         "--num-layers", "3", "--max-train-samples", "32", "--max-eval-samples", "32", "--no-track",
                         "--output-dir", str(tmp_path / "model"))
    assert code == 0, err[-2000:]
    code, out, err = run(capsys, "evaluate", str(tmp_path / "model"), "--no-track", "--json", "--max-eval-samples", "16")
    assert code == 0 and len(json.loads(out)["per_exit_metric"]) == 3, err[-2000:]
    model = MultiExitModel.from_pretrained(tmp_path / "model")
    assert [a["exit_layer"] for a in model.predict(["fine", "a dull film"], threshold=1.0)] == [1, 1]
    code, out, err = run(capsys, "check-backbone", distilbert, "--backbone-type", "distilbert-plugin", "--json")
    assert code == 0 and json.loads(out)["ok"], err


BROKEN = {
    "no-hidden-size": ('''
class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        del encoder.hidden_size
        return encoder
''', "the encoder from load has hidden_size = None; set it to a whole number"),
    "flat-embed": ('''
class Flat(DistilBertEncoder):
    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.model.embeddings(input_ids)[..., 0]

class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        encoder.__class__ = Flat
        return encoder
''', "embed returned a torch.float32 tensor of shape [4, 18], not a floating tensor of shape [batch, seq, hidden]"),
    "bare-mask": ('''
class BareMask(DistilBertEncoder):
    def context(self, hidden, attention_mask):
        return attention_mask

class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        encoder.__class__ = BareMask
        return encoder
''', "context returned Tensor, not an adaptive_exit.LayerContext"),
    "raising-layer": ('''
class Raising(DistilBertEncoder):
    def run_layer(self, index, hidden, context):
        raise RuntimeError("layer on fire")

class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        encoder.__class__ = Raising
        return encoder
''', "raised in run_layer: RuntimeError: layer on fire"),
}


def test_a_missing_directory_is_one_line_naming_the_plugin(site, offline, capsys, tmp_path) -> None:
    install(site)
    code, _, err = run(capsys, "check-backbone", str(tmp_path / "missing"), "--backbone-type", "distilbert-plugin")
    usage_error(code, err, f"backbone 'distilbert-plugin' of {PLUGIN} raised in load: OSError")


@pytest.mark.parametrize("entry", BROKEN)
def test_a_broken_backbone_is_one_line_naming_the_plugin(entry, site, distilbert, offline, capsys) -> None:
    change, problem = BROKEN[entry]
    install(site, change)
    code, _, err = run(capsys, "check-backbone", distilbert, "--backbone-type", "distilbert-plugin")
    usage_error(code, err, f"backbone 'distilbert-plugin' of {PLUGIN}", problem)


def test_a_raising_save_is_one_line_naming_the_plugin(site, distilbert, tmp_path) -> None:
    install(site, '''
class Unsaveable(DistilBertEncoder):
    def save(self, directory):
        raise OSError("read-only")

class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        encoder.__class__ = Unsaveable
        return encoder
''')
    from adaptive_exit.encoder_calls import load_encoder

    model = MultiExitModel(load_encoder("distilbert-plugin", distilbert, None), {"pooling": "mean", "dropout": 0.0,
                                                                                  "num_labels": 2})
    with pytest.raises(PluginError, match=r"raised in save: OSError: read-only"):
        model.save_pretrained(tmp_path / "model")


def test_a_backbone_whose_layers_differ_from_its_forward_is_refused(site, distilbert, offline, capsys) -> None:
    install(site, '''
class Unmasked(DistilBertEncoder):
    def run_layer(self, index, hidden, context):
        return self.model.transformer.layer[index](hidden, None)  # attends to padding

class Broken(DistilBertBackbone):
    def load(self, source, num_layers):
        encoder = super().load(source, num_layers)
        encoder.__class__ = Unmasked
        return encoder
''')
    code, out, err = run(capsys, "check-backbone", distilbert, "--backbone-type", "distilbert-plugin")
    assert code == 2 and "refused: layer 1 differs from the model's own forward" in out, out
    code, _, err = run(capsys, "train", *TINY, "--backbone-type", "distilbert-plugin", "--backbone", distilbert,
                       "--no-track")
    usage_error(code, err, "is refused: layer 1 differs from the model's own forward")
