"""Refuse malformed client updates before they reach the aggregator."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from fedllm.model.state import all_finite
from fedllm.types import ClientUpdate, Params

__all__ = ["all_finite", "find_problem", "params_problem"]


def find_problem(update: ClientUpdate, reference: Params) -> str | None:
    """Why ``update`` can't be aggregated against ``reference``, or None if it can.

    Checks, in order: the example count (an integer >= 0), that the delta is a
    mapping of tensors, missing and extra keys, shape, dtype, and non-finite
    values (NaN/Inf). Never raises on malformed input: it says what is wrong.
    """
    count = update.num_examples
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        return f"example count {count!r} is not an integer"
    if count < 0:
        return f"negative example count {count}"
    return params_problem(update.delta, reference)


def params_problem(delta: object, reference: Params) -> str | None:
    """Why ``delta`` doesn't match ``reference`` (keys, shapes, dtypes) or isn't finite."""
    if not isinstance(delta, Mapping):
        return f"update is a {type(delta).__name__}, not a mapping of named tensors"
    missing = sorted(set(reference) - set(delta))
    extra = sorted(set(delta) - set(reference), key=str)
    if missing:
        return f"missing {len(missing)} key(s), e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected key(s), e.g. {extra[0]!r}"
    for name, ref in reference.items():
        tensor = delta[name]
        if not isinstance(tensor, torch.Tensor):
            return f"{name!r} is a {type(tensor).__name__}, not a tensor"
        if tensor.shape != ref.shape:
            return f"{name!r} has shape {list(tensor.shape)}, expected {list(ref.shape)}"
        if tensor.dtype != ref.dtype:
            return f"{name!r} has dtype {tensor.dtype}, expected {ref.dtype}"
    for name, tensor in delta.items():
        if not bool(torch.isfinite(tensor).all()):
            return f"{name!r} contains NaN or Inf"
    return None
