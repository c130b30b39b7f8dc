"""Everything that crosses the wire is encoded here, and bytes are counted here.

A :class:`~fedllm.message.Message` is encoded as::

    [8-byte little-endian length N][N bytes of JSON: config and metric names]
    [8 bytes per metric: float64 values][safetensors of the arrays]

Tensors are encoded as safetensors: an 8-byte length, a JSON header padded
to 8 bytes, then the raw tensor data. Config values are JSON (bytes as
``{"$b64": ...}``, ASCII only), so the size of a message depends on its
names, shapes and config, never on the values of its floats.
:func:`message_bytes` gives ``len(encode_message(m))`` without copying any
tensor. Hard-prompt tables (candidate instructions down, score tables up)
travel in a message's config as compact UTF-8 JSON bytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import load, save

from fedllm.message import ConfigValue, Message
from fedllm.types import Params

# dtype -> (safetensors code, rank in safetensors' Dtype enum, which orders the layout)
_DTYPES = {
    torch.bool: ("BOOL", 0),
    torch.uint8: ("U8", 4),
    torch.int8: ("I8", 5),
    torch.int16: ("I16", 10),
    torch.float16: ("F16", 12),
    torch.bfloat16: ("BF16", 13),
    torch.int32: ("I32", 14),
    torch.float32: ("F32", 16),
    torch.float64: ("F64", 17),
    torch.int64: ("I64", 18),
}


def encode(params: Params) -> bytes:
    """Serialise named tensors to safetensors bytes."""
    return save({name: t.detach().contiguous() for name, t in params.items()})


def decode(payload: bytes) -> Params:
    """Inverse of :func:`encode`."""
    return load(payload)


class WireError(ValueError):
    """Bytes that are not an encoded message."""


def encode_message(message: Message) -> bytes:
    """Serialise a message (see the module docstring)."""
    header = _header(message)
    values = struct.pack(f"<{len(message.metrics)}d", *message.metrics.values())
    return struct.pack("<Q", len(header)) + header + values + encode(message.arrays)


def decode_message(payload: bytes) -> Message:
    """Inverse of :func:`encode_message`.

    Raises:
        WireError: a truncated or malformed payload.
    """
    try:
        (length,) = struct.unpack_from("<Q", payload)
        head = json.loads(payload[8 : 8 + length].decode("ascii"))
        names = head["metrics"]
        start = 8 + length
        values = struct.unpack_from(f"<{len(names)}d", payload, start)
        arrays = decode(payload[start + 8 * len(names) :])
        config = {k: _decode_value(v) for k, v in head["config"].items()}
    except (struct.error, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise WireError(f"not an encoded message: {err}") from None
    except Exception as err:  # safetensors raises its own error type
        raise WireError(f"not an encoded message: {err}") from None
    return Message(arrays, config, dict(zip(names, values, strict=True)))


def message_bytes(message: Message) -> int:
    """Exact ``len(encode_message(message))``, computed without copying any tensor."""
    return 8 + len(_header(message)) + 8 * len(message.metrics) + payload_bytes(message.arrays)


def try_message_bytes(message: object) -> int | None:
    """:func:`message_bytes`, or None for something that isn't a well-formed message
    (a malformed reply still crossed the wire, but has no size here)."""
    if not isinstance(message, Message):
        return None
    if try_payload_bytes(message.arrays) is None:
        return None
    try:
        return message_bytes(message)
    except (TypeError, ValueError):
        return None


def _header(message: Message) -> bytes:
    config = {k: _encode_value(v) for k, v in message.config.items()}
    head = {"config": config, "metrics": list(message.metrics)}
    return json.dumps(head, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _encode_value(value: ConfigValue) -> object:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode("ascii")}
    return value


def _decode_value(value: object) -> ConfigValue:
    if isinstance(value, dict):
        return base64.b64decode(value["$b64"], validate=True)
    if not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"config value of type {type(value).__name__}")
    return value


def try_payload_bytes(params: object) -> int | None:
    """:func:`payload_bytes`, or None for something that isn't named tensors of a
    supported dtype (a malformed update still crossed the wire, but has no size here)."""
    if not isinstance(params, dict):
        return None
    if not all(isinstance(t, torch.Tensor) and t.dtype in _DTYPES for t in params.values()):
        return None
    return payload_bytes(params)


def payload_bytes(params: Params) -> int:
    """Exact size in bytes of ``encode(params)``, computed without copying any data."""
    # safetensors lays tensors out by descending dtype rank, then by name.
    ordered = sorted(params.items(), key=lambda kv: (-_DTYPES[kv[1].dtype][1], kv[0]))
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype][0],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    # safetensors (serde_json) writes non-ASCII as raw UTF-8 and escapes only quotes,
    # backslashes and control characters, as ensure_ascii=False does.
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    padded = -(-len(text) // 8) * 8
    return 8 + padded + offset


def encode_texts(texts: Mapping[str, str]) -> bytes:
    """Named strings (candidate id -> instruction) as compact UTF-8 JSON."""
    return json.dumps(dict(texts), separators=(",", ":"), ensure_ascii=False).encode()


def decode_texts(payload: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_texts`.

    Raises:
        ValueError: the payload is not a JSON object of strings.
    """
    obj = json.loads(payload.decode())
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise ValueError("a text table must be a JSON object of strings")
    return obj


def encode_scores(table: Mapping[str, tuple[float, int]]) -> bytes:
    """A score table (candidate id -> (loss sum in nats, scored tokens)) as compact JSON."""
    rows = {key: [float(loss), int(tokens)] for key, (loss, tokens) in table.items()}
    return json.dumps(rows, separators=(",", ":")).encode()


def decode_scores(payload: bytes) -> dict[str, tuple[float, int]]:
    """Inverse of :func:`encode_scores`.

    Raises:
        ValueError: anything but ``{id: [finite loss sum >= 0, token count >= 0]}``.
    """
    obj = json.loads(payload.decode())
    if not isinstance(obj, dict):
        raise ValueError(f"a score table must be a JSON object, got {type(obj).__name__}")
    out: dict[str, tuple[float, int]] = {}
    for key, row in obj.items():
        ok = isinstance(row, list) and len(row) == 2
        loss, tokens = row if ok else (None, None)
        if not (
            isinstance(loss, (int, float))
            and not isinstance(loss, bool)
            and math.isfinite(loss)
            and loss >= 0
            and isinstance(tokens, int)
            and not isinstance(tokens, bool)
            and tokens >= 0
        ):
            raise ValueError(
                f"score of {key!r} must be [finite loss sum >= 0, token count >= 0], got {row!r}"
            )
        out[key] = (float(loss), tokens)
    return out
