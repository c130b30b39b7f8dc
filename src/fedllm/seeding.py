"""Derived seeds: every random choice is a pure function of (seed, what, round, who).

Deriving instead of drawing from one running generator makes a resumed run
take exactly the same choices as the uninterrupted one.
"""

from __future__ import annotations

import hashlib
import secrets


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys (strings, ints)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def secret_seed() -> int:
    """63 bits from the operating system's CSPRNG (:mod:`secrets`): a seed that no config
    value determines, for the draws a privacy guarantee rests on under
    ``run.randomness = 'secure'``. Generators seeded with it (torch's, numpy's) are not
    CSPRNGs themselves, as with Opacus's secure mode; their raw outputs never leave the
    process un-noised, and without the seed nobody can recompute them."""
    return secrets.randbits(63)


def privacy_seed(seed: int, *keys: object, secure: bool) -> int:
    """The seed of a draw a privacy guarantee rests on: :func:`secret_seed` when
    ``secure``; else reproducible (anyone who knows the config can recompute it): the
    run seed itself, or :func:`derive_seed` of it and ``keys``."""
    if secure:
        return secret_seed()
    return derive_seed(seed, *keys) if keys else seed
