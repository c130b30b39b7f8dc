"""Refuse malformed client updates before they reach the aggregator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.types import ClientUpdate, Params, Rejection


def find_problem(update: ClientUpdate, reference: Params) -> str | None:
    """Why ``update`` can't be aggregated against ``reference``, or None if it can.

    Checks, in order: example count, missing and extra keys, shape, dtype,
    and non-finite values (NaN/Inf).
    """
    if update.num_examples < 0:
        return f"negative example count {update.num_examples}"
    missing = sorted(set(reference) - set(update.delta))
    extra = sorted(set(update.delta) - set(reference))
    if missing:
        return f"missing {len(missing)} key(s), e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected key(s), e.g. {extra[0]!r}"
    for name, ref in reference.items():
        tensor = update.delta[name]
        if not isinstance(tensor, torch.Tensor):
            return f"{name!r} is a {type(tensor).__name__}, not a tensor"
        if tensor.shape != ref.shape:
            return f"{name!r} has shape {list(tensor.shape)}, expected {list(ref.shape)}"
        if tensor.dtype != ref.dtype:
            return f"{name!r} has dtype {tensor.dtype}, expected {ref.dtype}"
    for name, tensor in update.delta.items():
        if not bool(torch.isfinite(tensor).all()):
            return f"{name!r} contains NaN or Inf"
    return None


def split_valid(
    updates: Sequence[ClientUpdate], reference: Params
) -> tuple[list[ClientUpdate], list[Rejection]]:
    """Partition updates into accepted ones and rejections with reasons."""
    accepted: list[ClientUpdate] = []
    rejected: list[Rejection] = []
    for update in updates:
        problem = find_problem(update, reference)
        if problem is None:
            accepted.append(update)
        else:
            rejected.append(Rejection(update.client_id, problem))
    return accepted, rejected
