"""Every supported encoder architecture, run one layer at a time, computes what its own forward computes; real early
exit on it equals the simulation; a saved model loads back to the same outputs; what cannot be shown exact is
refused. Tiny random-weight models built from configs, tokenized with the MiniLM tokenizer."""

from __future__ import annotations

import pytest
import torch

from adaptive_exit import encoders
from adaptive_exit.aliases import resolve_source
from adaptive_exit.backbones import HuggingFace
from adaptive_exit.encoder_calls import load_encoder, require_fidelity
from adaptive_exit.encoders.bert import MaskContext, layer_mask
from adaptive_exit.encoders.mpnet import MPNet
from adaptive_exit.errors import UsageError
from adaptive_exit.fidelity import measure
from adaptive_exit.testing import check_backbone

SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
ARCHITECTURES = {
    "bert": ("bert", SMALL),
    "roberta": ("roberta", SMALL),
    "xlm-roberta": ("xlm-roberta", SMALL),
    "electra": ("electra", dict(SMALL, embedding_size=16)),
    "distilbert": ("distilbert", dict(vocab_size=30522, dim=32, n_layers=3, n_heads=4, hidden_dim=64)),
    "albert": ("albert", dict(SMALL, embedding_size=16, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)),
    "deberta": ("deberta", dict(SMALL, relative_attention=True, pos_att_type=["c2p", "p2c"])),
    "deberta-v3": ("deberta-v2", dict(SMALL, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                                      share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                      type_vocab_size=0, max_relative_positions=-1)),
    "deberta-v2-conv": ("deberta-v2", dict(SMALL, relative_attention=True, conv_kernel_size=3, position_buckets=256,
                                           norm_rel_ebd="layer_norm", pos_att_type=["p2c", "c2p"])),
    "mpnet": ("mpnet", SMALL),
    "modernbert": ("modernbert", dict(SMALL, num_hidden_layers=4, global_attn_every_n_layers=2, local_attention=4,
                                      pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
                                      sep_token_id=102)),
}
TEXTS = ["ok", "an utterly gripping film " * 6, "the acting is wooden but the score is lovely", "meh", "fine."]


def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """A random-weight model of architecture ``name`` saved with the MiniLM tokenizer, as a user's directory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    model_type, options = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **options))
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_source("minilm-l6")).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def architecture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return request.param, tiny_encoder_dir(tmp_path_factory, request.param)


def test_every_layer_equals_the_models_own_hidden_states(architecture: tuple[str, str]) -> None:
    name, directory = architecture
    encoder = load_encoder("huggingface", directory, None)
    assert type(encoder) is encoders.ADAPTERS[ARCHITECTURES[name][0]]
    batch = dict(encoder.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    assert (mask == 0).any()  # padded
    with torch.no_grad():
        own = encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                            **encoder.token_types(types)).hidden_states
        hidden = encoder.embed(ids, types, mask)
        context = encoder.context(hidden, mask)
        per_exit = (len(own) - 1) // encoder.num_layers
        for index in range(encoder.num_layers):
            hidden = encoder.run_layer(index, hidden, context)
            reference = own[per_exit * (index + 1)]
            assert float((hidden - reference).abs()[mask.bool()].max()) <= 1e-5, f"{name} layer {index + 1}"
    report = measure(encoder, batch)
    assert report.ok and report.max_abs_diff <= 1e-5 and len(report.per_layer) == encoder.num_layers


def test_early_exit_equals_simulation_and_save_load_keeps_outputs(architecture: tuple[str, str]) -> None:
    name, directory = architecture
    report = check_backbone(HuggingFace, directory)  # early exit at batch sizes 1, 7, 32; save -> load_saved
    assert report.ok, report.problem


@pytest.mark.parametrize("name", ["mpnet", "deberta-v3", "modernbert"])
def test_the_engines_save_load_and_predict(name: str, tmp_path, tmp_path_factory) -> None:
    """The engine's own path (check_backbone has covered every architecture): MultiExitModel.save_pretrained, then
    from_pretrained (fidelity-checked again), and predict."""
    from adaptive_exit import MultiExitModel

    directory = tiny_encoder_dir(tmp_path_factory, name)
    torch.manual_seed(1)
    model = MultiExitModel(load_encoder("huggingface", directory, None),
                           {"pooling": "mean", "dropout": 0.0, "num_labels": 2, "backbone_type": "huggingface",
                            "label_names": ["neg", "pos"], "text_fields": ["text"],
                            "signal": {"name": "entropy", "options": {}},
                            "run": {"data": {"max_length": 64}}}).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = MultiExitModel.from_pretrained(tmp_path / "model")
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        after = loaded(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
    assert torch.equal(before, after)
    answers = loaded.predict(TEXTS, threshold=0.5, batch_size=2)
    assert [a["label"] in ("neg", "pos") for a in answers] == [True] * len(TEXTS)


def test_a_broken_adapter_is_refused(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """MPNet run without the relative position bias its encoder computes once: the check finds it, load refuses."""

    class NoPositionBias(MPNet):
        def context(self, hidden, attention_mask):
            return MaskContext(attention_mask, layer_mask(self.model.config, hidden, attention_mask))

        def run_layer(self, index, hidden, context):
            return self.model.encoder.layer[index](hidden, context.layer_mask)[0]

    directory = tiny_encoder_dir(tmp_path_factory, "mpnet")
    monkeypatch.setitem(encoders.ADAPTERS, "mpnet", NoPositionBias)
    with pytest.raises(UsageError, match=r"backbone '.*' \(type mpnet\) is refused: layer 1 differs from the "
                                         r"model's own forward by .*check-backbone"):
        load_encoder("huggingface", directory, None)


def test_a_type_without_adapter_runs_only_if_the_generic_path_is_exact(tmp_path_factory, monkeypatch) -> None:
    roberta = tiny_encoder_dir(tmp_path_factory, "roberta")
    deberta = tiny_encoder_dir(tmp_path_factory, "deberta")
    distilbert = tiny_encoder_dir(tmp_path_factory, "distilbert")
    for model_type in ("roberta", "deberta", "distilbert"):
        monkeypatch.delitem(encoders.ADAPTERS, model_type)
    assert measure(load_encoder("huggingface", roberta, None)).ok  # the BERT-family path, checked: exact
    with pytest.raises(UsageError, match=r"\(type deberta\) is refused: .*Supported types: bert, .*backbone plugin"):
        load_encoder("huggingface", deberta, None)  # runs, but computes something else
    with pytest.raises(UsageError, match=r"type 'distilbert' has no adapter here and is not built like BERT"):
        load_encoder("huggingface", distilbert, None)


def test_num_layers_keeps_the_first_layers_of_every_family(tmp_path_factory) -> None:
    for name in ("distilbert", "modernbert", "deberta-v3"):
        encoder = load_encoder("huggingface", tiny_encoder_dir(tmp_path_factory, name), 2)
        assert encoder.num_layers == 2 and measure(encoder).ok
    with pytest.raises(UsageError, match="share 2 layer groups"):
        load_encoder("huggingface", tiny_encoder_dir(tmp_path_factory, "albert"), 2)


def test_layer_flops_for_every_family(tmp_path_factory) -> None:
    for name in ("bert", "distilbert", "albert", "deberta", "mpnet", "modernbert"):
        encoder = load_encoder("huggingface", tiny_encoder_dir(tmp_path_factory, name), None, check=False)
        assert encoder.layer_flops(20) > encoder.layer_flops(10) > 0


def test_the_fidelity_check_is_also_run_on_load_of_a_saved_model(tmp_path, tmp_path_factory, monkeypatch) -> None:
    from adaptive_exit import MultiExitModel

    encoder = load_encoder("huggingface", tiny_encoder_dir(tmp_path_factory, "mpnet"), None)
    MultiExitModel(encoder, {"pooling": "mean", "dropout": 0.0, "num_labels": 2,
                             "backbone_type": "huggingface"}).save_pretrained(tmp_path)
    require_fidelity(MultiExitModel.from_pretrained(tmp_path).encoder, "saved")
    monkeypatch.setattr(MPNet, "context", lambda self, hidden, mask: MaskContext(mask, None, ))
    monkeypatch.setattr(MPNet, "run_layer", lambda self, i, hidden, c: self.model.encoder.layer[i](hidden)[0])
    with pytest.raises(UsageError, match="is refused"):
        MultiExitModel.from_pretrained(tmp_path)


def test_rounding_the_models_own_forward_shows_is_allowed_and_no_more(tmp_path_factory, monkeypatch) -> None:
    """A sentence alone may differ from the same sentence in a padded batch by what the model's own forward differs
    there (another shape rounds otherwise: 5e-5 of the scale for a fine-tuned MPNet on an Intel Xeon with AMX),
    plus the tolerance; a layer path that differs where the model's own forward does not is refused."""
    from adaptive_exit import fidelity

    encoder = load_encoder("huggingface", tiny_encoder_dir(tmp_path_factory, "bert"), None)

    def rounded(states: list[torch.Tensor]) -> list[torch.Tensor]:  # 1e-3 more, for a sentence alone
        return [s + (1e-3 if s.shape[0] == 1 else 0.0) for s in states]

    layer_path, own_forward = fidelity._layer_path, encoder.own_forward
    monkeypatch.setattr(fidelity, "_layer_path", lambda *args: rounded(layer_path(*args)))
    refused = measure(encoder)
    assert refused.problem.startswith("probe sentence 1 run alone differs at layer 1 by 0.001 from the same sentence "
                                      "in a padded batch, where its own forward differs by ")
    monkeypatch.setattr(encoder, "own_forward", lambda *args, **kwargs: rounded(own_forward(*args, **kwargs)))
    report = measure(encoder)
    assert report.ok and report.alone == pytest.approx(1e-3, rel=1e-3) and report.own_alone == pytest.approx(1e-3, rel=1e-3)
