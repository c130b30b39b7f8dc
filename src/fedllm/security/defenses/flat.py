"""Clients' updates as rows of one matrix, and back: what every robust rule works on.

Each client's update is flattened to one vector (every tensor of it, flattened and
concatenated in the broadcast's key order): a rule sees a LoRA update's ``A`` and ``B``
as coordinates of that vector, not the product ``B A`` (docs/security.md). Rows are
float32 (float64 when the broadcast holds float64), norms and distances float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.aggregate.mean import accumulator_dtype
from fedllm.pipeline.stage import WeightedUpdate
from fedllm.types import Params


def stack(updates: Sequence[WeightedUpdate], reference: Params) -> torch.Tensor:
    """The updates as the rows of one ``[n, d]`` matrix, ``d`` the entries of
    ``reference`` (the broadcast the deltas are against).

    Raises:
        ValueError: no update, or an update whose tensors differ from the reference's.
    """
    if not updates:
        raise ValueError("a robust aggregator needs at least one update")
    dtype = (
        torch.float64
        if any(accumulator_dtype(t.dtype) == torch.float64 for t in reference.values())
        else torch.float32
    )
    size = sum(t.numel() for t in reference.values())
    rows = torch.empty((len(updates), size), dtype=dtype)
    for row, update in zip(rows, updates, strict=True):
        if set(update.delta) != set(reference):
            raise ValueError(
                f"client {update.client_id!r}'s update names other tensors than the "
                "broadcast: a robust aggregator compares whole updates"
            )
        start = 0
        for name, ref in reference.items():
            tensor = update.delta[name]
            if tensor.shape != ref.shape:
                raise ValueError(
                    f"client {update.client_id!r}'s {name!r} has shape {tuple(tensor.shape)}, "
                    f"the broadcast's {tuple(ref.shape)}"
                )
            row[start : start + ref.numel()] = tensor.detach().reshape(-1).to(dtype)
            start += ref.numel()
    return rows


def unstack(vector: torch.Tensor, reference: Params) -> Params:
    """One flat vector back to ``reference``'s names, shapes and dtypes."""
    out: Params = {}
    start = 0
    for name, ref in reference.items():
        out[name] = vector[start : start + ref.numel()].reshape(ref.shape).to(ref.dtype)
        start += ref.numel()
    return out


def weights_of(updates: Sequence[WeightedUpdate]) -> torch.Tensor:
    """The updates' aggregation weights (float64).

    Raises:
        ValueError: a negative weight.
    """
    weights = torch.tensor([u.weight for u in updates], dtype=torch.float64)
    if bool((weights < 0).any()):
        raise ValueError(f"aggregation weights must be >= 0, got {weights.tolist()}")
    return weights


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i x_i / sum_i w_i`` over the rows, in the rows' dtype.

    Raises:
        ValueError: the weights sum to 0.
    """
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("weighted mean of updates whose weights sum to 0")
    return (weights.to(rows.dtype) / total) @ rows


def norms(rows: torch.Tensor) -> torch.Tensor:
    """Each row's L2 norm (float64, ``[n]``)."""
    return torch.stack([row.double().norm() for row in rows])


def squared_distances(rows: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2`` for every pair of rows (float64, ``[n, n]``, zero diagonal),
    one pair at a time (memory: one update)."""
    n = rows.shape[0]
    out = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = (rows[i] - rows[j]).double().pow(2).sum()
    return out


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Each coordinate's median over the rows (the mean of the two middle values when
    the count is even)."""
    ordered = rows.sort(dim=0).values
    n = rows.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def need(rule: str, n: int, fewest: int, why: str) -> None:
    """Refuse a round with fewer than ``fewest`` updates for ``rule``.

    Raises:
        ValueError: naming the rule, the condition and the counts.
    """
    if n < fewest:
        raise ValueError(
            f"{rule} needs at least {fewest} updates ({why}), got {n}: lower the assumed "
            "number of Byzantine clients or sample more clients per round"
        )


def cosine_similarities(rows: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, x_j) = <x_i, x_j> / (||x_i|| ||x_j||)`` for every pair of rows (float64,
    ``[n, n]``; 0 where a row is zero, so a zero row is like no other), one pair at a time
    (memory: one update)."""
    n = rows.shape[0]
    gram = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        row = rows[i].double()
        for j in range(i, n):
            gram[i, j] = gram[j, i] = torch.dot(row, rows[j].double())
    length = gram.diagonal().sqrt()
    scale = length[:, None] * length[None, :]
    return torch.where(scale > 0, gram / scale.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
