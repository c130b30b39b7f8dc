"""A model state as one flat vector and back: what vector protocols (secure aggregation,
homomorphic encryption) encrypt or mask."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from fedllm.types import Params


def flatten(params: Params) -> NDArray[np.float64]:
    """Every tensor of ``params``, in sorted key order, as one float64 vector."""
    if not params:
        return np.zeros(0)
    return np.concatenate(
        [params[k].detach().double().reshape(-1).cpu().numpy() for k in sorted(params)]
    )


def unflatten(vector: NDArray[np.floating], template: Params) -> Params:
    """The inverse of :func:`flatten`, shaped and typed like ``template``.

    Raises:
        ValueError: the vector's length is not the template's entry count.
    """
    total = sum(t.numel() for t in template.values())
    if vector.shape != (total,):
        raise ValueError(f"a vector of {vector.shape} does not fill {total} entries")
    out: Params = {}
    at = 0
    for key in sorted(template):
        ref = template[key]
        piece = torch.from_numpy(np.ascontiguousarray(vector[at : at + ref.numel()]))
        out[key] = piece.reshape(ref.shape).to(ref.dtype)
        at += ref.numel()
    return out
