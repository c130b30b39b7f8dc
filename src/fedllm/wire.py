"""Everything that crosses the wire is encoded here, and bytes are counted here.

The encoding is safetensors: an 8-byte length, a JSON header padded to 8
bytes, then the raw tensor data.
"""

from __future__ import annotations

import json

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
