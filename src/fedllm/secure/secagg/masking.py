"""The masks of SecAgg+: a self mask from a seed, pairwise masks that cancel in the sum.

Client u adds ``PRG(b_u)`` and, for each neighbour v that shared keys, ``+PRG(k_uv)``
if ``u < v`` and ``-PRG(k_uv)`` if ``u > v`` (ids compared as strings), all mod
2^bits; ``k_uv`` is the X25519 agreement of u's and v's mask keys, so the two masks of
a pair cancel when both inputs are summed. The server removes what does not cancel:
the self masks of the clients whose input arrived, and the pairwise masks between a
survivor and a neighbour that dropped after sharing keys.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from fedllm.secure.keys import agree, context_label
from fedllm.secure.secagg.prg import expand

MASK_PURPOSE = "mask"
"""The context label of pairwise mask seeds."""
ENCRYPT_PURPOSE = "encrypt"
"""The context label of the pairwise keys that seal share messages."""


def pair_sign(owner: str, peer: str) -> int:
    """+1 if ``owner`` adds its mask with ``peer``, -1 if it subtracts it."""
    return 1 if owner < peer else -1


def pairwise_seed(
    private: X25519PrivateKey, peer_public: bytes, round_id: int, owner: str, peer: str
) -> bytes:
    """The 32-byte seed of the pairwise mask between ``owner`` and ``peer`` (the same from
    either end)."""
    return agree(private, peer_public, context_label(MASK_PURPOSE, round_id, owner, peer))


def add_mask(vector: NDArray[np.int64], seed: bytes, bits: int, sign: int) -> None:
    """``vector += sign * PRG(seed)`` mod 2^bits, in place (entries stay in [0, 2^bits)).

    With bits <= 62 every entry and mask is below 2^62, so their sum or difference fits
    int64 before the reduction; ``& (2^bits - 1)`` is the reduction (two's complement).
    """
    mask = expand(seed, vector.shape[0], bits)
    if sign > 0:
        np.add(vector, mask, out=vector)
    else:
        np.subtract(vector, mask, out=vector)
    np.bitwise_and(vector, np.int64((1 << bits) - 1), out=vector)


def wire_dtype(masked: NDArray[np.int64], bits: int) -> NDArray[np.signedinteger]:
    """The masked vector in the narrowest signed type that holds the ring: int32 up to
    31 bits (4 bytes an entry, as a float32 update), int64 above."""
    return masked.astype(np.int32) if bits <= 31 else masked
