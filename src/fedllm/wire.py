"""Everything that crosses the wire is encoded here, and bytes are counted here.

Tensors are encoded as safetensors: an 8-byte length, a JSON header padded
to 8 bytes, then the raw tensor data. Hard-prompt selection exchanges small
tables instead, as compact UTF-8 JSON: candidate instructions down, score
tables up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import torch
from safetensors.torch import load, save

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


def try_payload_bytes(params: object) -> int | None:
    """:func:`payload_bytes`, or None for something that isn't named tensors of a
    supported dtype (a malformed update still crossed the wire, but has no size here)."""
    if not isinstance(params, dict):
        return None
    if not all(isinstance(t, torch.Tensor) and t.dtype in _DTYPES for t in params.values()):
        return None
    return payload_bytes(params)


EXTRA_PREFIX = "extra/"
"""Key prefix of the tensors sent beside a model state or delta in the same message."""


def with_extra(params: Params, extra: Params) -> Params:
    """One message's tensors: ``params`` plus ``extra`` under :data:`EXTRA_PREFIX`."""
    return {**params, **{EXTRA_PREFIX + k: v for k, v in extra.items()}}


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
    text = json.dumps(header, separators=(",", ":")).encode()
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
