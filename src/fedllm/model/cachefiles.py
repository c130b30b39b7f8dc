"""Housekeeping of the on-disk cache that models and tokenizers are built into."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

STALE_TMP_S = 3600.0
"""Age in seconds after which a temporary build directory counts as abandoned."""


def remove_stale_tmp_dirs(final: Path) -> None:
    """Delete ``.<final name>.tmp-*`` directories beside ``final`` that killed
    processes left behind (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)
