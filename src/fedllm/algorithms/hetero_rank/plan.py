"""Heterogeneous LoRA ranks, client side (HetLoRA: Cho et al. 2024, "Heterogeneous
LoRA for Federated Fine-tuning of On-Device Foundation Models").

The federation holds one LoRA of the global rank ``r``; client ``i`` can only
afford rank ``r_i <= r``. It trains exactly the truncated model: the broadcast
with ``lora_A`` rows ``>= r_i`` and ``lora_B`` columns ``>= r_i`` set to zero.
Those components then get exactly zero gradients (the gradient of ``A[k]`` is
proportional to ``B[:, k]`` and that of ``B[:, k]`` to ``A[k]``), so they stay
zero under SGD, momentum, AdamW with weight decay and FedProx (whose anchor is
the truncated start). The client uploads only ``A[:r_i]`` and ``B[:, :r_i]``.

The scale stays the global ``alpha / r`` for every client, so the truncated
model is exactly the rank-``r_i`` slice of the global product:
``(alpha / r) B[:, :r_i] A[:r_i]``; it equals a peft LoRA of rank ``r_i`` with
``lora_alpha = alpha * r_i / r`` and those weights. (Common reimplementations give
each client ``alpha / r_i``, which scales a low-rank client's factors up by
``r / r_i`` against the global model's.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from fedllm.client.budget import per_client_value
from fedllm.model.methods.lora import rank_axis
from fedllm.model.settings import MethodConfig
from fedllm.settings import check_client_names
from fedllm.types import ClientId, ClientUpdate, Params

RANK_METRIC = "lora_rank"
"""Metric carrying the rank a client trained."""


def client_rank(cfg: MethodConfig, client_id: ClientId, seed: int) -> int:
    """A client's LoRA rank (a property of the client, fixed by the seed).

    In order: ``ranks_by_client[client_id]``; with ``rank_min``, a seeded
    uniform draw from ``[rank_min, r]``; otherwise ``r``.
    """
    drawn = per_client_value(cfg.ranks_by_client, cfg.rank_min, cfg.r, client_id, seed, "lora-rank")
    return cfg.r if drawn is None else drawn


def check_rank_clients(cfg: MethodConfig, clients: Iterable[ClientId]) -> None:
    """Refuse ``ranks_by_client`` entries naming clients that don't exist."""
    check_client_names("method.ranks_by_client", cfg.ranks_by_client, clients)


def truncate(params: Params, rank: int) -> Params:
    """``params`` with LoRA rank components ``>= rank`` set to zero (copies of those
    tensors only; the others are shared)."""
    out = dict(params)
    for name, tensor in params.items():
        axis = rank_axis(name)
        if axis is not None and tensor.shape[axis] > rank:
            cut = tensor.clone()
            cut.narrow(axis, rank, tensor.shape[axis] - rank).zero_()
            out[name] = cut
    return out


def compact(params: Params, rank: int) -> Params:
    """The rank-``rank`` slices of the LoRA tensors (``A[:rank]``, ``B[:, :rank]``);
    other tensors as they are."""
    out = dict(params)
    for name, tensor in params.items():
        axis = rank_axis(name)
        if axis is not None and tensor.shape[axis] > rank:
            out[name] = tensor.narrow(axis, 0, rank).contiguous()
    return out


@dataclass(frozen=True)
class RankPlan:
    """Who trains which LoRA rank.

    Attributes:
        cfg: the method settings (``r``, ``rank_min``, ``ranks_by_client``,
            ``rank_aggregation``).
        seed: the run seed (each drawn rank derives from it and the client id).
    """

    cfg: MethodConfig
    seed: int

    def rank_of(self, client_id: ClientId) -> int:
        """The client's rank, ``1 <= rank <= r``."""
        return client_rank(self.cfg, client_id, self.seed)

    def start(self, client_id: ClientId, broadcast: Params) -> Params:
        """The state the client trains from: the broadcast truncated to its rank."""
        return truncate(broadcast, self.rank_of(client_id))

    def upload(self, update: ClientUpdate) -> ClientUpdate:
        """The update the client sends: its rank's slices, its rank in the metrics."""
        rank = self.rank_of(update.client_id)
        with torch.no_grad():
            delta = compact(update.delta, rank)
        return replace(update, delta=delta, metrics={**update.metrics, RANK_METRIC: float(rank)})
