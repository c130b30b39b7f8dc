"""Distances between LoRA updates measured on each layer's product ``B A``.

A LoRA client changes a layer's weight by ``(B + dB)(A + dA) - B A`` (times the
``alpha / r`` scale), not by ``(dA, dB)``. Two clients' changes differ by
``||P_i - P_j||_F`` with ``P_i = (B + dB_i)(A + dA_i)``: the broadcast ``B A`` cancels.
Summed over the layers (squared), plus the squared flat distance of every tensor that
is not a LoRA factor, it gives the distance the rule ranks by. The ``alpha / r`` scale
is left out (one constant for every layer of a run).

``<P_i, P_j>_F = sum((B_i^T B_j) * (A_i A_j^T))`` from ``r x r`` Gram matrices, in
float64, without forming an ``out x in`` product (peft's ``lora_A``: ``[r, in]``,
``lora_B``: ``[out, r]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.model.methods.lora import lora_pairs
from fedllm.pipeline.stage import WeightedUpdate
from fedllm.types import Params


def product_pairs(reference: Params) -> list[tuple[str, str]]:
    """``(lora_A name, lora_B name)`` of every LoRA layer of ``reference``.

    Raises:
        ValueError: no LoRA factor at all, or one without its partner.
    """
    pairs = lora_pairs(reference)
    if not pairs:
        raise ValueError(
            "distance = 'lora_product' needs LoRA updates (lora_A / lora_B tensors); "
            "this run's updates have none: use distance = 'flat'"
        )
    return pairs


def product_squared_distances(updates: Sequence[WeightedUpdate], reference: Params) -> torch.Tensor:
    """``sum_layers ||P_i - P_j||_F^2 + sum_other ||d_i - d_j||^2`` for every pair of
    updates (float64, ``[n, n]``, exactly symmetric)."""
    n = len(updates)
    pairs = product_pairs(reference)
    factors = {name for pair in pairs for name in pair}
    out = torch.zeros((n, n), dtype=torch.float64)
    for a_name, b_name in pairs:
        a = torch.stack([reference[a_name].double() + u.delta[a_name].double() for u in updates])
        b = torch.stack([reference[b_name].double() + u.delta[b_name].double() for u in updates])
        gram_b = torch.einsum("ior,jos->ijrs", b, b)  # B_i^T B_j
        gram_a = torch.einsum("iry,jsy->ijrs", a, a)  # A_i A_j^T
        inner = (gram_b * gram_a).sum(dim=(2, 3))  # <P_i, P_j>_F
        own = inner.diagonal()
        out += own[:, None] + own[None, :] - 2 * inner
    for name in reference:
        if name in factors:
            continue
        flat = torch.stack([u.delta[name].double().reshape(-1) for u in updates])
        out += torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    # <P_i, P_j> and <P_j, P_i> are summed in different orders: the mean of the two
    # halves makes the matrix exactly symmetric, so that equal distances tie (Krum's and
    # Bulyan's ties go by arrival order, not by rounding).
    out = (out + out.T) / 2
    out.fill_diagonal_(0.0)
    return out.clamp_(min=0.0)
