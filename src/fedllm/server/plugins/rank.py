"""Heterogeneous LoRA ranks, server side: rank-``r_i`` updates back to rank ``r``.

A client of rank ``r_i`` uploads ``A[:r_i]`` and ``B[:, :r_i]`` (see
:mod:`fedllm.client.rank`). Before validation the server pads them with zeros
to the broadcast's shapes, so :func:`~fedllm.server.validate.find_problem`
still checks every update against the broadcast, and a slice of the wrong
rank is refused with the client's rank in the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from fedllm.client.rank import RankPlan, rank_axis
from fedllm.types import ClientUpdate, Params


class RankExpansion:
    """Zero-pads each client's rank-``r_i`` LoRA slices to the global rank ``r``.

    Args:
        plan: who trains which rank.
        per_rank: give the aggregator each update's coverage (the rank
            components it trained), so that each component is averaged over
            the clients that train it. Otherwise (HetLoRA's zero padding) a
            plain mean counts components above ``r_i`` as no change.
    """

    def __init__(self, plan: RankPlan, per_rank: bool = False) -> None:
        self.plan = plan
        self.per_rank = per_rank

    def expand(self, update: ClientUpdate, reference: Params) -> ClientUpdate | str:
        """The update padded to ``reference``'s shapes, or why its LoRA slices are not of
        the client's rank.

        Never raises. Anything but a LoRA tensor of a lower rank (missing or
        unexpected keys, non-tensors, wrong dtypes, NaN) is passed on as it
        is, for :func:`~fedllm.server.validate.find_problem` to describe.
        """
        delta = update.delta
        if not isinstance(delta, Mapping):
            return update
        rank = self.plan.rank_of(update.client_id)
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
            padded[name] = pad(tensor, axis, ref.shape[axis])
        return replace(update, delta=padded)

    def coverage(self, update: ClientUpdate) -> Params | None:
        """Per tensor, a 0/1 mask (broadcastable to it) of the rank components the client
        trained, for a per-rank mean; None for zero padding (a plain mean)."""
        if not self.per_rank:
            return None
        rank = self.plan.rank_of(update.client_id)
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


def pad(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``tensor`` with zeros appended along ``axis`` up to ``size``."""
    shape = list(tensor.shape)
    shape[axis] = size
    out = torch.zeros(shape, dtype=tensor.dtype)
    out.narrow(axis, 0, tensor.shape[axis]).copy_(tensor)
    return out
