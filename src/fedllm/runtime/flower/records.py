"""fedllm messages inside Flower records.

A message travels as its :mod:`fedllm.wire` encoding (the same bytes the
simulator counts), cut into chunks of at most :data:`CHUNK_BYTES`, each one
``Array`` of an ``ArrayRecord``; the phase rides in a ``ConfigRecord``. Any
tensor dtype (bf16 included, which numpy lacks) round-trips bit for bit, and the
bytes on the wire are the encoding's length plus Flower's own framing.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedllm.message import Message
from fedllm.wire import WireError, decode_message, encode_message

CHUNK_BYTES = 4 * 2**20
"""Largest chunk per Array (4 MiB): under the 5 MiB Flower sends per HTTP frame."""

PAYLOAD = "fedllm"
"""Key of the ArrayRecord holding the encoded message."""

HEADER = "fedllm.header"
"""Key of the ConfigRecord holding the phase and the encoded length."""

STYPE = "fedllm.wire"
"""The ``Array.stype`` naming fedllm's encoding (not numpy bytes)."""


def to_records(message: Message, phase: str) -> RecordDict:
    """``message`` for ``phase`` as Flower records (the wire encoding in chunks)."""
    payload = encode_message(message)
    chunks = ArrayRecord()
    for index, start in enumerate(range(0, max(len(payload), 1), CHUNK_BYTES)):
        piece = payload[start : start + CHUNK_BYTES]
        chunks[f"{index:06d}"] = Array(dtype="uint8", shape=(len(piece),), stype=STYPE, data=piece)
    header = ConfigRecord({"phase": phase, "bytes": len(payload)})
    return RecordDict({PAYLOAD: chunks, HEADER: header})


def from_records(content: RecordDict) -> tuple[str, Message]:
    """The phase and the message that :func:`to_records` put in ``content``.

    Raises:
        WireError: the records are not a fedllm message (missing parts, a chunk of
            another encoding, a length that does not match).
    """
    if PAYLOAD not in content.array_records or HEADER not in content.config_records:
        raise WireError(f"not a fedllm message: records {sorted(content)}")
    header = content.config_records[HEADER]
    chunks = content.array_records[PAYLOAD]
    if any(chunks[name].stype != STYPE for name in chunks):
        raise WireError(f"not a fedllm message: an array is not of stype {STYPE!r}")
    payload = b"".join(chunks[name].data for name in sorted(chunks))
    expected = payload_size(content)
    if len(payload) != expected:
        raise WireError(f"fedllm message of {expected} bytes arrived as {len(payload)}")
    return str(header["phase"]), decode_message(payload)


def payload_size(content: RecordDict) -> int:
    """Bytes of the fedllm encoding carried in ``content`` (what the simulator counts).

    Raises:
        WireError: the header's length is not an integer.
    """
    size = content.config_records[HEADER]["bytes"]
    if not isinstance(size, int):
        raise WireError(f"not a fedllm message: encoded length {size!r} is not an integer")
    return size
