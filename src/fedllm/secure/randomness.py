"""Sources of randomness for private keys, self-mask seeds and Shamir coefficients.

Simulation uses :class:`SeededRandomness` (every byte a function of an int seed and
labels, so a run reproduces exactly); deployment uses :class:`SystemRandomness`
(the operating system's CSPRNG). A seeded source is not secret to whoever knows the
seed: never use it outside simulation.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

_DOMAIN = b"fedllm-secagg-rng/v1"


class Randomness(Protocol):
    """Where random bytes come from."""

    @property
    def deterministic(self) -> bool:
        """True when the bytes are reproducible (simulation), False for a CSPRNG."""
        ...

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` random bytes."""
        ...


class SystemRandomness:
    """The operating system's CSPRNG (``os.urandom``): for deployment."""

    @property
    def deterministic(self) -> bool:
        """Always False."""
        return False

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes from ``os.urandom``."""
        if n < 0:
            raise ValueError(f"cannot draw {n} bytes")
        return os.urandom(n)


class SeededRandomness:
    """A reproducible byte stream: SHA-256 in counter mode over a key derived from an int
    seed and labels (e.g. the round and the client id). For simulation only.

    Args:
        seed: the run's seed.
        *labels: what the stream is for (strings or ints); different labels give
            independent streams.
    """

    def __init__(self, seed: int, *labels: str | int) -> None:
        text = "/".join([str(seed), *map(str, labels)]).encode()
        self._key = hashlib.sha256(_DOMAIN + b"\x00" + text).digest()
        self._counter = 0
        self._buffer = b""

    @property
    def deterministic(self) -> bool:
        """Always True."""
        return True

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        if n < 0:
            raise ValueError(f"cannot draw {n} bytes")
        blocks = [self._buffer]
        have = len(self._buffer)
        while have < n:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "little")).digest()
            self._counter += 1
            blocks.append(block)
            have += len(block)
        data = b"".join(blocks)
        self._buffer = data[n:]
        return data[:n]
