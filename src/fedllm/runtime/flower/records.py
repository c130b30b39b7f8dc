"""fedllm messages inside Flower records.

A message travels as its :mod:`fedllm.wire` encoding (the same bytes the
simulator counts), packed by :mod:`~fedllm.runtime.flower.chunks`. Any tensor dtype
(bf16 included, which numpy lacks) round-trips bit for bit, and the bytes on the
wire are the encoding's length plus Flower's own framing.
"""

from __future__ import annotations

from flwr.app import RecordDict

from fedllm.message import Message
from fedllm.runtime.flower.chunks import (
    CHUNK_BYTES,
    HEADER,
    PAYLOAD,
    STYPE,
    NotFedllmRecords,
    pack,
    unpack,
)
from fedllm.runtime.flower.chunks import payload_size as _payload_size
from fedllm.wire import WireError, decode_message, encode_message

__all__ = [
    "CHUNK_BYTES",
    "HEADER",
    "PAYLOAD",
    "STYPE",
    "from_records",
    "payload_size",
    "to_records",
]


def to_records(message: Message, phase: str) -> RecordDict:
    """``message`` for ``phase`` as Flower records (the wire encoding in chunks)."""
    return pack(encode_message(message), phase)


def from_records(content: RecordDict) -> tuple[str, Message]:
    """The phase and the message that :func:`to_records` put in ``content``.

    Raises:
        WireError: the records are not a fedllm message (missing parts, a chunk of
            another encoding, a length that does not match).
    """
    try:
        phase, payload = unpack(content)
    except NotFedllmRecords as err:
        raise WireError(str(err)) from None
    return phase, decode_message(payload)


def payload_size(content: RecordDict) -> int:
    """Bytes of the fedllm encoding carried in ``content`` (what the simulator counts).

    Raises:
        WireError: the header's length is not an integer.
    """
    try:
        return _payload_size(content)
    except NotFedllmRecords as err:
        raise WireError(str(err)) from None
