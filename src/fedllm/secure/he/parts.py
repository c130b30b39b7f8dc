"""The message parts of CKKS aggregation that its client and server halves share: phase
names, config keys, array and metric names, the ciphertexts' packing."""

from __future__ import annotations

from fedllm.secure.messages import pack_map, unpack_map

TRAIN_PHASE = "he/train"
DECRYPT_PHASE = "he/decrypt"
PHASES = (TRAIN_PHASE, DECRYPT_PHASE)
"""The protocol's phases, in order (engine phase names)."""

CHUNKS = "he.chunks"
"""Config key of an encrypted vector: its ciphertexts, packed (bytes)."""
LENGTH = "he.length"
"""Config key of the decrypt request's vector length."""
WEIGHTED = "he.weighted"
"""Config key of the broadcast: True when updates are weighted by example count."""
REFUSED = "he.refused"
"""Config key of a client's refusal (its reason)."""
PLAIN_SUM = "he/sum"
"""The array of the decrypt reply: the decrypted sum (float64)."""
ENCRYPT_S = "he/encrypt_s"
CIPHERTEXT_BYTES = "he/ciphertext_bytes"
"""Client metrics: seconds to encrypt its update, and the ciphertext's bytes."""
FLOODING_STD = "he/flooding_std"
"""Metric of the decrypt reply: the standard deviation of the noise added to each value
of the sum (value units)."""


def pack_chunks(chunks: list[bytes]) -> bytes:
    """Ciphertexts as one config value (their order kept)."""
    return pack_map({f"{i:08d}": chunk for i, chunk in enumerate(chunks)})


def unpack_chunks(data: bytes) -> list[bytes]:
    """The ciphertexts of :func:`pack_chunks`."""
    entries = unpack_map(data)
    return [entries[key] for key in sorted(entries)]
