"""Where the package keeps what it computes once and reuses (the base model, trained federations,
executed notebooks, results): ``$FEDUNLEARN_CACHE``, default ``~/.cache/fedunlearn``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The package's cache directory: ``$FEDUNLEARN_CACHE``, default ``~/.cache/fedunlearn``."""
    return Path(os.environ.get("FEDUNLEARN_CACHE", Path.home() / ".cache" / "fedunlearn"))
