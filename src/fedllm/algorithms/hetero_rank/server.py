"""Heterogeneous LoRA ranks, server half: rank-``r_i`` updates back to rank ``r``.

A client of rank ``r_i`` uploads ``A[:r_i]`` and ``B[:, :r_i]`` (see
:mod:`fedllm.algorithms.hetero_rank.plan`). Before validation the server pads them
to the broadcast's shapes, so :func:`~fedllm.server.validate.find_problem` still
checks every update against the broadcast, and a slice of the wrong rank is
refused with the client's rank in the reason. What fills the components above
``r_i`` depends on ``method.rank_aggregation``:

- ``hetlora``: ``-G`` (minus the broadcast's components), so that ``G + delta`` is
  the client's module zero-padded to rank ``r``, as HetLoRA pads modules;
- ``padded_deltas`` and ``per_rank``: zeros (no change from this client; ``per_rank``
  also tells the aggregator which components the client trained).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from fedllm.model.methods.lora import rank_axis
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import ClientId, ClientUpdate, Params

AGGREGATIONS = ("hetlora", "padded_deltas", "per_rank")
"""The values of ``method.rank_aggregation``."""


class RankExpansion(ServerPlugin):
    """Pads each client's rank-``r_i`` LoRA slices to the global rank ``r``.

    Args:
        rank_of: each client's rank.
        aggregation: ``method.rank_aggregation``. ``"hetlora"`` pads the delta with
            ``-G`` (the client's module is zero above ``r_i``, as HetLoRA pads it);
            ``"padded_deltas"`` pads with zeros (a plain mean then counts components
            above ``r_i`` as no change); ``"per_rank"`` pads with zeros and gives the
            aggregator each update's coverage, so that each component is averaged
            over the clients that train it.
    """

    name = "rank"

    def __init__(
        self, rank_of: Callable[[ClientId], int], aggregation: str = "padded_deltas"
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"rank aggregation {aggregation!r} is not one of {AGGREGATIONS}")
        self.rank_of = rank_of
        self.aggregation = aggregation

    def decode(self, ctx: RoundContext, update: ClientUpdate) -> ClientUpdate | str:
        """The update padded to the broadcast's shapes, with its coverage."""
        expanded = self.expand(update, ctx.params)
        if isinstance(expanded, str):
            return expanded
        try:
            coverage = self.coverage(expanded)
        except (AttributeError, TypeError):  # malformed: validation will say what is wrong
            coverage = None
        return replace(expanded, coverage=coverage)

    def expand(self, update: ClientUpdate, reference: Params) -> ClientUpdate | str:
        """The update padded to ``reference``'s shapes (with ``-reference`` above the
        client's rank for ``hetlora``, zeros otherwise), or why its LoRA slices are not
        of the client's rank.

        Never raises. Anything but a LoRA tensor of a lower rank (missing or
        unexpected keys, non-tensors, wrong dtypes, NaN) is passed on as it
        is, for :func:`~fedllm.server.validate.find_problem` to describe.
        """
        delta = update.delta
        if not isinstance(delta, Mapping):
            return update
        rank = self.rank_of(update.client_id)
        padded = dict(delta)
        for name, ref in reference.items():
            axis = rank_axis(name)
            tensor = delta.get(name)
            if axis is None or not isinstance(tensor, torch.Tensor) or ref.shape[axis] == rank:
                continue
            expected = list(ref.shape)
            expected[axis] = rank
            if list(tensor.shape) != expected:
                return (
                    f"client {update.client_id!r} trains LoRA rank {rank} of "
                    f"{ref.shape[axis]}, but {name!r} has shape {list(tensor.shape)}; "
                    f"expected {expected}"
                )
            fill = -ref if self.aggregation == "hetlora" else None
            padded[name] = pad(tensor, axis, ref.shape[axis], fill)
        return replace(update, delta=padded)

    def coverage(self, update: ClientUpdate) -> Params | None:
        """Per tensor, a 0/1 mask (broadcastable to it) of the rank components the client
        trained, for a per-rank mean; None for the other rules (whole updates)."""
        if self.aggregation != "per_rank":
            return None
        rank = self.rank_of(update.client_id)
        masks: Params = {}
        for name, tensor in update.delta.items():
            axis = rank_axis(name)
            if axis is None or tensor.shape[axis] == rank:
                continue
            shape = [1] * tensor.dim()
            shape[axis] = tensor.shape[axis]
            mask = torch.zeros(shape)
            mask.narrow(axis, 0, rank).fill_(1.0)
            masks[name] = mask
        return masks


def pad(
    tensor: torch.Tensor, axis: int, size: int, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """``tensor`` extended along ``axis`` up to ``size``: the new entries are ``fill``'s
    (a tensor of the full shape) or zeros; in ``tensor``'s dtype."""
    shape = list(tensor.shape)
    shape[axis] = size
    if fill is None:
        out = torch.zeros(shape, dtype=tensor.dtype)
    else:
        out = fill.detach().to(dtype=tensor.dtype, copy=True)
    out.narrow(axis, 0, tensor.shape[axis]).copy_(tensor)
    return out
