"""Bytes inside Flower records, with nothing but flwr imported (a ClientApp that only
forwards messages starts in about a second instead of importing torch).

An encoded fedllm message travels cut into chunks of at most :data:`CHUNK_BYTES`, each
one ``Array`` of an ``ArrayRecord``; the phase and the length ride in a ``ConfigRecord``.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

CHUNK_BYTES = 4 * 2**20
"""Largest chunk per Array (4 MiB): under the 5 MiB Flower sends per HTTP frame."""

PAYLOAD = "fedllm"
"""Key of the ArrayRecord holding the encoded message."""

HEADER = "fedllm.header"
"""Key of the ConfigRecord holding the phase and the encoded length."""

STYPE = "fedllm.wire"
"""The ``Array.stype`` naming fedllm's encoding (not numpy bytes)."""

IDENTITY = "fedllm.identity"
"""Config record of a node's answer to the server's query: its client id (``client``),
training-set size (``train``, the sampling and weighting size) and its signature of
them with the challenge (``signature``, bytes; empty without an auth-key)."""

CHALLENGE = "fedllm.challenge"
"""Config record of the server's identity query: the random bytes the node signs
(``challenge``)."""


class NotFedllmRecords(ValueError):
    """Records that do not carry a fedllm message (missing parts, another encoding)."""


def pack(payload: bytes, phase: str) -> RecordDict:
    """``payload`` (an encoded message) for ``phase`` as Flower records, in chunks."""
    chunks = ArrayRecord()
    for index, start in enumerate(range(0, max(len(payload), 1), CHUNK_BYTES)):
        piece = payload[start : start + CHUNK_BYTES]
        chunks[f"{index:06d}"] = Array(dtype="uint8", shape=(len(piece),), stype=STYPE, data=piece)
    header = ConfigRecord({"phase": phase, "bytes": len(payload)})
    return RecordDict({PAYLOAD: chunks, HEADER: header})


def unpack(content: RecordDict) -> tuple[str, bytes]:
    """The phase and the bytes :func:`pack` put in ``content``.

    Raises:
        NotFedllmRecords: missing parts, a chunk of another encoding, or a length that
            does not match the header.
    """
    if PAYLOAD not in content.array_records or HEADER not in content.config_records:
        raise NotFedllmRecords(f"not a fedllm message: records {sorted(content)}")
    header = content.config_records[HEADER]
    chunks = content.array_records[PAYLOAD]
    if any(chunks[name].stype != STYPE for name in chunks):
        raise NotFedllmRecords(f"not a fedllm message: an array is not of stype {STYPE!r}")
    payload = b"".join(chunks[name].data for name in sorted(chunks))
    expected = payload_size(content)
    if len(payload) != expected:
        raise NotFedllmRecords(f"fedllm message of {expected} bytes arrived as {len(payload)}")
    return str(header["phase"]), payload


def payload_size(content: RecordDict) -> int:
    """Bytes of the fedllm encoding carried in ``content`` (what the simulator counts).

    Raises:
        NotFedllmRecords: the header's length is not an integer.
    """
    size = content.config_records[HEADER]["bytes"]
    if not isinstance(size, int):
        raise NotFedllmRecords(f"not a fedllm message: encoded length {size!r} is not an integer")
    return size
