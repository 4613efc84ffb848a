"""The fidelity check of an encoder: does running it one layer at a time compute what its own forward computes,
and does a sample give the same states alone as in a padded batch (what real early exit relies on)?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .backbones import Encoder

PROBE_TEXTS = (
    "A gripping, beautifully acted film that stays with you long after the credits.",
    "Dull.",
    "Two men are playing guitars on a stage while the crowd sings along with them.",
    "It is what it is, I suppose.",
)
# The largest difference allowed, as a share of the largest magnitude of the reference states at that layer (at
# least 1). Both paths call the same modules on the same inputs in fp32: measured, every adapter's layer path equals
# the model's own forward exactly (difference 0, tiny random models of each architecture and the real MiniLM-L6 and
# all-mpnet-base-v2), and a sample run alone differs from the same sample in a padded batch by at most 2e-6 on
# states of magnitude 10 (the attention kernel sees another shape): 2e-7 of the scale, 50 times below this. A layer
# run without what its forward computes once differs far more: MPNet without its position bias by 1.3e-4 of the
# scale at layer 1 with random weights and 0.09 with the real ones, DeBERTa through the BERT path by 0.008.
# Another shape can round further on other CPUs: all-mpnet-base-v2 after fine-tuning, on an Intel Xeon with AMX,
# gives sentence 4 alone 2.3e-4 away from the same sentence in the batch at layer 11 (5e-5 of the scale) through
# its own forward, exactly as much as through the layer path. So a sentence alone may differ from the batch by
# the tolerance plus twice what the model's own forward differs there; a mask or padding the layer path gets
# wrong differs by orders of magnitude more than the model itself.
TOLERANCE = 1e-5


@dataclass
class Fidelity:
    """The check's findings. ``per_layer``: the largest absolute difference on real tokens between each layer's
    states and the model's own forward (empty if the encoder has no ``own_forward``); ``alone``: the largest
    difference between a sample's states run alone and in the padded batch, layer by layer; ``own_alone``: the
    same for the model's own forward (the rounding another shape brings); ``problem``: why it is refused, or
    None."""

    architecture: str
    num_layers: int
    per_layer: list[float] = field(default_factory=list)
    alone: float = 0.0
    own_alone: float = 0.0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def max_abs_diff(self) -> float | None:
        return max(self.per_layer) if self.per_layer else None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs_diff": self.max_abs_diff, "per_layer": self.per_layer,
                "alone_max_abs_diff": self.alone,
                "own_alone_max_abs_diff": self.own_alone, "architecture": self.architecture, "num_layers": self.num_layers,
                "tolerance": TOLERANCE, "problem": self.problem}


def encoder_device(encoder: Encoder) -> torch.device:
    """Where the encoder's parameters are (the CPU for one without parameters)."""
    parameter = next(encoder.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def probe_batch(tokenizer: Any, texts: tuple[str, ...] = PROBE_TEXTS) -> dict[str, torch.Tensor]:
    """The probe sentences tokenized and padded into one batch."""
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt"))


def _layer_path(encoder: Encoder, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> list[torch.Tensor]:
    hidden = encoder.embed(ids, types, mask)
    context = encoder.context(hidden, mask)
    states = []
    for index in range(encoder.num_layers):
        hidden = encoder.run_layer(index, hidden, context)
        states.append(hidden)
    return states


def _difference(states: torch.Tensor, reference: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """The largest absolute difference on real tokens, and the reference's largest magnitude there."""
    return (float((states - reference).abs()[real].max()), float(reference.abs()[real].max()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _compare(encoder: Encoder, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
             report: Fidelity) -> None:
    """Fill ``report``: the layer path against the model's own forward, then each sample alone against the batch."""
    real = mask.bool()
    try:
        states = _layer_path(encoder, ids, mask, types)
    except Exception as exc:
        report.problem = f"running it one layer at a time raised {_first_line(exc)}"
        return
    try:
        reference = encoder.own_forward(ids, mask, types)
    except Exception as exc:
        report.problem = f"its own forward raised {_first_line(exc)}"
        return
    if reference is not None:
        if len(reference) != len(states):
            report.problem = f"its own forward gives {len(reference)} layers' states, the layer path {len(states)}"
            return
        for index, (mine, theirs) in enumerate(zip(states, reference)):
            diff, scale = _difference(mine, theirs, real)
            report.per_layer.append(diff)
            if report.problem is None and not diff <= TOLERANCE * max(1.0, scale):
                report.problem = (f"layer {index + 1} differs from the model's own forward by {diff:.3g} (largest "
                                  f"state {scale:.3g}, tolerance {TOLERANCE:g} of it)")
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        piece = (ids[row:row + 1, :length], mask[row:row + 1, :length],
                 None if types is None else types[row:row + 1, :length])
        try:
            alone = _layer_path(encoder, *piece)
            own_alone = encoder.own_forward(*piece) if reference is not None else None
        except Exception as exc:
            report.problem = report.problem or f"a probe sentence run alone raised {_first_line(exc)}"
            return
        for index, (mine, batched) in enumerate(zip(alone, states)):
            diff, scale = _difference(mine[0], batched[row, :length], real[row, :length])
            # the rounding that another shape brings: the model's own forward, alone against in the batch
            noise = 0.0 if own_alone is None else _difference(own_alone[index][0], reference[index][row, :length],
                                                              real[row, :length])[0]
            report.alone = max(report.alone, diff)
            report.own_alone = max(report.own_alone, noise)
            if report.problem is None and not diff <= TOLERANCE * max(1.0, scale) + 2 * noise:
                report.problem = (f"probe sentence {row + 1} run alone differs at layer {index + 1} by {diff:.3g} "
                                  f"from the same sentence in a padded batch, where its own forward differs by "
                                  f"{noise:.3g} (so early exit, which drops rows and padding, would change answers)")


@torch.no_grad()
def measure(encoder: Encoder, batch: dict[str, torch.Tensor] | None = None) -> Fidelity:
    """Run the probe batch (default: ``PROBE_TEXTS``) through the layer-by-layer path and the model's own forward,
    in fp32 and eval mode, and each sample alone through the layer path; what differs, and by how much."""
    from .precision import full_precision

    architecture = getattr(encoder, "architecture", type(encoder).__name__)
    report = Fidelity(architecture, encoder.num_layers)
    device = encoder_device(encoder)
    batch = {k: v.to(device) for k, v in (batch or probe_batch(encoder.tokenizer)).items()}
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    was_training = encoder.training
    encoder.eval()
    try:
        with full_precision(device):
            _compare(encoder, ids, mask, types, report)
    except Exception as exc:
        report.problem = f"the check raised {_first_line(exc)}"
    finally:
        encoder.train(was_training)
    return report
