"""The pseudo-random generator that expands a 32-byte seed into a mask vector.

AES-256 in counter mode keyed by the seed (nonce zero) yields a keystream; each
8 bytes, little-endian, reduced mod 2^bits, give one mask entry, uniform in
[0, 2^bits). A seed must serve one mask only: the protocol's seeds are fresh
(self-mask seeds) or derived for one round and one pair (pairwise seeds).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

SEED_BYTES = 32
_NONCE = bytes(16)


def expand(seed: bytes, n: int, bits: int) -> NDArray[np.int64]:
    """``n`` masks uniform in [0, 2^bits), a function of ``seed`` alone.

    Args:
        seed: 32 bytes (the AES-256 key).
        n: how many entries, >= 0.
        bits: the ring's width, 1 <= bits <= 63.

    Returns:
        int64 array of shape (n,).

    Raises:
        ValueError: the seed is not 32 bytes, or ``n`` or ``bits`` is out of range.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
    if n < 0:
        raise ValueError(f"cannot expand a seed into {n} entries")
    if not 1 <= bits <= 63:
        raise ValueError(f"bits = {bits} must be in 1 .. 63")
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_NONCE)).encryptor()
    # update_into wants room for one block beyond the data: two spare int64 entries
    buffer = np.empty(n + 2, dtype="<i8")
    encryptor.update_into(bytes(8 * n), buffer.data.cast("B"))
    encryptor.finalize()
    words = buffer[:n].astype(np.int64, copy=False)  # a no-op on little-endian machines
    np.bitwise_and(words, np.int64((1 << bits) - 1), out=words)
    return words
