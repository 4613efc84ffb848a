"""Where the project keeps what it fetches or builds once: prepared data sets and assembled offline models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ADAPTIVE_EXIT_CACHE`` or ``~/.cache/adaptive-exit``."""
    root = os.environ.get("ADAPTIVE_EXIT_CACHE") or Path.home() / ".cache" / "adaptive-exit"
    return Path(root)
