"""Derived seeds: every random choice is a pure function of (seed, what, round, who).

Deriving instead of drawing from one running generator makes a resumed run
take exactly the same choices as the uninterrupted one.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys (strings, ints)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
