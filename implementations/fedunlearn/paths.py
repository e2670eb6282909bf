"""Where the package keeps what it computes once and reuses (the base model, trained federations,
executed notebooks, results): ``$FEDUNLEARN_CACHE``, default ``~/.cache/fedunlearn``; and the
digest of the package source that cache keys include."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (processes computing the same cached item wait
    for the first one instead of computing it again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
