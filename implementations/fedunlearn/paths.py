"""Where the package keeps what it computes once and reuses (the base model, trained federations,
executed notebooks, results): ``$FEDUNLEARN_CACHE``, default ``~/.cache/fedunlearn``; and the
digest of the package source that cache keys include."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The package's cache directory: ``$FEDUNLEARN_CACHE``, default ``~/.cache/fedunlearn``."""
    return Path(os.environ.get("FEDUNLEARN_CACHE", Path.home() / ".cache" / "fedunlearn"))


@cache
def source_digest(*relative: str) -> str:
    """SHA-256 of the ``.py`` files under the given package paths (folders or files, relative to
    the package; none = the whole package), names included, in sorted order."""
    digest = hashlib.sha256()
    for item in relative or ("",):
        path = PACKAGE / item
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(PACKAGE).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
