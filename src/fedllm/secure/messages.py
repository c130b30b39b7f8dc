"""The byte layouts of the per-phase payloads (all fit a message's config as bytes).

* advertise reply: ``{"pk_c": 32 bytes, "pk_s": 32 bytes}``, and the client's
  signature of them where nodes hold authentication keys;
* share-keys request: neighbour id -> ``pk_c || pk_s`` (64 bytes) ``|| signature``
  (DER, where signed);
* share-keys reply: neighbour id -> sealed share message;
* masked-input request: sender id -> sealed share message addressed to the receiver;
* masked-input reply: the masked vector (int64 array);
* unmask request: ``{"survivors": ids, "dropped": ids}``, ids as a JSON list;
* unmask reply: neighbour id -> one revealed share (index || share).

A share message's plaintext is ``index (4 bytes) || self-mask-seed share || mask-key
share``; ``index`` is the recipient's Shamir x-coordinate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from fedllm.secure.errors import SecAggViolation
from fedllm.secure.keys import KEY_BYTES
from fedllm.secure.secagg.shamir import SHARE_BYTES

PUBLIC_C = "pk_c"
"""The advertise reply's encryption public key."""
PUBLIC_S = "pk_s"
"""The advertise reply's mask-agreement public key."""
SURVIVORS = "survivors"
"""The unmask request's neighbours whose masked input arrived: reveal self-mask shares."""
DROPPED = "dropped"
"""The unmask request's neighbours that shared keys but sent no masked input: reveal
mask-key shares."""

MAX_SIGNATURE_BYTES = 160
"""The longest signature a share-keys entry may carry (ECDSA P-521 in DER is 139)."""

_INDEX_BYTES = 4
PLAINTEXT_BYTES = _INDEX_BYTES + 2 * SHARE_BYTES
REVEALED_BYTES = _INDEX_BYTES + SHARE_BYTES


def encode_ids(ids: Iterable[str]) -> bytes:
    """Client ids as a JSON list, in the given order."""
    return json.dumps(list(ids)).encode()


def decode_ids(data: bytes) -> list[str]:
    """The ids of :func:`encode_ids` (duplicates kept, for the receiver to refuse).

    Raises:
        SecAggViolation: not a JSON list of strings.
    """
    try:
        ids = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SecAggViolation(f"an id list is not JSON: {error}") from error
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise SecAggViolation("an id list must be a JSON list of strings")
    return ids


def pack_keys(public_c: bytes, public_s: bytes, signature: bytes = b"") -> bytes:
    """A neighbour's two public keys as one 64-byte value, then its signature (if any)."""
    return public_c + public_s + signature


def unpack_keys(data: bytes) -> tuple[bytes, bytes]:
    """The (encryption, mask) public keys of :func:`pack_keys`.

    Raises:
        SecAggViolation: not 64 bytes.
    """
    if len(data) != 2 * KEY_BYTES:
        raise SecAggViolation(f"a neighbour's keys are {2 * KEY_BYTES} bytes, not {len(data)}")
    return data[:KEY_BYTES], data[KEY_BYTES:]


def unpack_signed_keys(data: bytes) -> tuple[bytes, bytes, bytes]:
    """The (encryption, mask) public keys and the signature of :func:`pack_keys`.

    Raises:
        SecAggViolation: no signature, or not 64 bytes of keys and one signature.
    """
    keys, signature = data[: 2 * KEY_BYTES], data[2 * KEY_BYTES :]
    if not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise SecAggViolation(
            f"signed keys are {2 * KEY_BYTES} bytes and a signature of 1 to "
            f"{MAX_SIGNATURE_BYTES}, not {len(data)} bytes"
        )
    public_c, public_s = unpack_keys(keys)
    return public_c, public_s, signature


def pack_plaintext(index: int, b_share: bytes, s_share: bytes) -> bytes:
    """A share message's plaintext."""
    return index.to_bytes(_INDEX_BYTES, "big") + b_share + s_share


def unpack_plaintext(data: bytes) -> tuple[int, bytes, bytes]:
    """(index, self-mask-seed share, mask-key share) of :func:`pack_plaintext`.

    Raises:
        SecAggViolation: the wrong length or a zero index.
    """
    if len(data) != PLAINTEXT_BYTES:
        raise SecAggViolation(f"a share message is {PLAINTEXT_BYTES} bytes, not {len(data)}")
    index = _index(data)
    rest = data[_INDEX_BYTES:]
    return index, rest[:SHARE_BYTES], rest[SHARE_BYTES:]


def pack_revealed(index: int, share: bytes) -> bytes:
    """One revealed share."""
    return index.to_bytes(_INDEX_BYTES, "big") + share


def unpack_revealed(data: bytes) -> tuple[int, bytes]:
    """(index, share) of :func:`pack_revealed`.

    Raises:
        SecAggViolation: the wrong length or a zero index.
    """
    if len(data) != REVEALED_BYTES:
        raise SecAggViolation(f"a revealed share is {REVEALED_BYTES} bytes, not {len(data)}")
    return _index(data), data[_INDEX_BYTES:]


def _index(data: bytes) -> int:
    index = int.from_bytes(data[:_INDEX_BYTES], "big")
    if index < 1:
        raise SecAggViolation("a share index must be >= 1")
    return index


_ID_LEN_BYTES = 2
_VALUE_LEN_BYTES = 4


def pack_map(entries: Mapping[str, bytes]) -> bytes:
    """Id -> bytes entries as one value, sorted by id: each entry ``len(id) (2 bytes) ||
    id (UTF-8) || len(value) (4 bytes) || value``."""
    out = bytearray()
    for cid in sorted(entries):
        key = cid.encode()
        value = entries[cid]
        out += len(key).to_bytes(_ID_LEN_BYTES, "big") + key
        out += len(value).to_bytes(_VALUE_LEN_BYTES, "big") + value
    return bytes(out)


def unpack_map(data: bytes) -> dict[str, bytes]:
    """The entries of :func:`pack_map`.

    Raises:
        SecAggViolation: truncated, an id repeated, or an id that is not UTF-8.
    """
    entries: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        key, at = _field(data, at, _ID_LEN_BYTES)
        value, at = _field(data, at, _VALUE_LEN_BYTES)
        try:
            cid = key.decode()
        except UnicodeDecodeError as error:
            raise SecAggViolation(f"an id is not UTF-8: {error}") from error
        if cid in entries:
            raise SecAggViolation(f"id {cid!r} appears twice in one message")
        entries[cid] = value
    return entries


def _field(data: bytes, at: int, width: int) -> tuple[bytes, int]:
    if at + width > len(data):
        raise SecAggViolation("a secure-aggregation message is truncated")
    size = int.from_bytes(data[at : at + width], "big")
    start = at + width
    if start + size > len(data):
        raise SecAggViolation("a secure-aggregation message is truncated")
    return data[start : start + size], start + size
