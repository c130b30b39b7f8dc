"""Housekeeping of the on-disk cache that models and tokenizers are built into."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

STALE_TMP_S = 3600.0
"""Age in seconds after which a temporary build directory counts as abandoned."""


class IncompleteCacheError(ValueError):
    """A cache entry that exists but lacks the file marking it complete."""


def build_once(final: Path, build: Callable[[Path], None], marker: str) -> Path:
    """``final``, built on first use by ``build`` and complete once it holds ``marker``.

    ``build(tmp)`` writes the entry, ``marker`` included, into a temporary
    directory beside ``final``, which is then renamed into place: an interrupted
    or concurrent build never leaves a partial entry behind. When two processes
    race, the first rename wins and the other's build is dropped.

    Args:
        final: the cache entry's directory.
        build: writes the entry into the directory it is given.
        marker: name of the file inside ``final`` whose presence marks it complete.

    Raises:
        IncompleteCacheError: ``final`` exists without ``marker`` (made by hand, or
            by an older fedllm).
    """
    if (final / marker).is_file():
        return final
    if final.exists():
        raise IncompleteCacheError(f"{final} exists but is not a complete fedllm cache; delete it")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private to the user
        try:
            tmp.rename(final)
        except OSError:
            if not (final / marker).is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_tmp_dirs(final: Path) -> None:
    """Delete ``.<final name>.tmp-*`` directories beside ``final`` that killed
    processes left behind (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)
