"""HetLoRA's sparsity-weighted aggregation (Cho et al. 2024), computed on deltas.

The paper pads each client's LoRA module ``(A_k, B_k)`` with zeros to the global
rank and averages the padded modules with weights ``p_k = S_k / sum_j S_j``,
``S_k = ||B_k A_k||_F``. The server here holds deltas against the broadcast ``G``;
:class:`~fedllm.algorithms.hetero_rank.server.RankExpansion` (``hetlora``) pads a
rank-``r_k`` client's delta with ``-G``, so that ``M_k = G + u_k`` is its padded
module. Since ``sum_k p_k = 1``, ``sum_k p_k M_k - G = sum_k p_k u_k``: the mean
of the modules is one server step (lr 1) on the weighted mean of the deltas.

fedllm computes ``S_k`` and ``p_k`` per adapted layer (each ``lora_A`` / ``lora_B``
pair): the paper writes the rule for one module, and a norm over the whole model
would let the layers with the largest products set every layer's weights. LoRA's
scale ``alpha / r`` is the same for every client (see
:mod:`~fedllm.algorithms.hetero_rank.plan`), so it cancels in ``p_k`` and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedllm.aggregate.mean import accumulator_dtype
from fedllm.model.methods.lora import lora_pairs
from fedllm.pipeline.stage import BatchResult, WeightedUpdate
from fedllm.types import Params


class SparsityWeightedMean:
    """Per LoRA layer, ``sum_k p_k u_k`` with ``p_k = S_k / sum_j S_j`` and ``S_k`` the
    Frobenius norm of client ``k``'s module product ``(B_G + u_k[B]) (A_G + u_k[A])``;
    every other tensor, the mean weighted by the configured weights.

    Updates of weight 0 (no examples under ``server.weighting = "examples"``) take no
    part. In a layer where every module is zero (all ``S_k = 0``), the modules are
    averaged uniformly (``p_k = 1 / K``).
    """

    name = "hetlora"
    linear = False  # the weights depend on the updates

    def __init__(self) -> None:
        self.last_weights: dict[str, list[float]] = {}
        """``p_k`` of the last round, by layer (its ``lora_A`` name), in update order."""

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        """The aggregate of ``updates``, deltas against ``reference`` (the broadcast).

        Raises:
            ValueError: no update has a positive weight, or a LoRA tensor of
                ``reference`` has no partner (``lora_A`` without ``lora_B``).
        """
        kept = [u for u in updates if u.weight > 0]
        if not kept:
            raise ValueError("sparsity-weighted mean of updates whose weights sum to 0")
        pairs = lora_pairs(reference)
        out: Params = {}
        self.last_weights = {}
        with torch.no_grad():
            for a_name, b_name in pairs:
                a_ref, b_ref = reference[a_name], reference[b_name]
                norms = [
                    product_norm(a_ref + u.delta[a_name], b_ref + u.delta[b_name]) for u in kept
                ]
                weights = sparsity_weights(norms)
                self.last_weights[a_name] = weights
                out[a_name] = weighted_sum([u.delta[a_name] for u in kept], weights, a_ref)
                out[b_name] = weighted_sum([u.delta[b_name] for u in kept], weights, b_ref)
            total = sum(u.weight for u in kept)
            plain = [u.weight / total for u in kept]
            for name, ref in reference.items():
                if name not in out:
                    out[name] = weighted_sum([u.delta[name] for u in kept], plain, ref)
        return BatchResult(out)


def product_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||B A||_F`` for ``A`` of shape ``[r, in]`` and ``B`` of shape ``[out, r]``,
    from the ``r x r`` Gram matrices (``||BA||_F^2 = sum((A A^T) * (B^T B))``), in
    float64, without forming the ``out x in`` product."""
    a64, b64 = a.detach().double(), b.detach().double()
    squared = float(((a64 @ a64.T) * (b64.T @ b64)).sum())
    return math.sqrt(max(squared, 0.0))


def sparsity_weights(norms: Sequence[float]) -> list[float]:
    """``p_k = S_k / sum_j S_j``; uniform where every ``S_k`` is 0."""
    total = sum(norms)
    if total <= 0:
        return [1.0 / len(norms)] * len(norms)
    return [s / total for s in norms]


def weighted_sum(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], like: torch.Tensor
) -> torch.Tensor:
    """``sum_k w_k t_k``, summed in float32 (float64 for float64), in ``like``'s dtype."""
    acc = torch.zeros(like.shape, dtype=accumulator_dtype(like.dtype))
    for tensor, weight in zip(tensors, weights, strict=True):
        acc.add_(tensor.to(acc.dtype), alpha=weight)
    return acc.to(like.dtype)
