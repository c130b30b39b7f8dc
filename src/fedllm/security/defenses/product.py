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


def product_pairs(reference: Params, setting: str = "distance") -> list[tuple[str, str]]:
    """``(lora_A name, lora_B name)`` of every LoRA layer of ``reference``.

    Raises:
        ValueError: no LoRA factor at all (naming the rule's ``setting`` that asked for
            products), or one without its partner.
    """
    pairs = lora_pairs(reference)
    if not pairs:
        raise ValueError(
            f"{setting} = 'lora_product' needs LoRA updates (lora_A / lora_B tensors); "
            f"this run's updates have none: use {setting} = 'flat'"
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


def product_norm_polynomials(updates: Sequence[WeightedUpdate], reference: Params) -> torch.Tensor:
    """For each update ``x``, the coefficients ``(a2, a3, a4)`` of the squared norm of the
    change it makes when its factors' deltas are scaled by ``c``:
    ``sum_layers ||(B + c dB)(A + c dA) - B A||_F^2 + sum_other ||c d||^2
    = a2 c^2 + a3 c^3 + a4 c^4`` (float64, ``[n, 3]``).

    Per layer the change is ``c L + c^2 Q`` with ``L = dB A + B dA`` and ``Q = dB dA``, so
    ``a2 = ||L||^2`` (plus every other tensor's squared norm), ``a3 = 2 <L, Q>`` and
    ``a4 = ||Q||^2``; each from ``r x r`` Gram matrices (``<X Y, U V>_F =
    sum((X^T U) * (Y V^T))``), without forming an ``out x in`` product.
    """
    pairs = product_pairs(reference, setting="measure")
    factors = {name for pair in pairs for name in pair}
    out = torch.zeros((len(updates), 3), dtype=torch.float64)
    for a_name, b_name in pairs:
        a, b = reference[a_name].double(), reference[b_name].double()
        a_a, b_b = a @ a.T, b.T @ b  # the broadcast's Grams, common to every update
        for i, update in enumerate(updates):
            da, db = update.delta[a_name].double(), update.delta[b_name].double()
            db_db, da_da, a_da = db.T @ db, da @ da.T, a @ da.T
            l_l = (db_db * a_a).sum() + (b_b * da_da).sum() + 2 * ((db.T @ b) * a_da).sum()
            l_q = (db_db * a_da).sum() + ((b.T @ db) * da_da).sum()
            out[i] += torch.stack([l_l, 2 * l_q, (db_db * da_da).sum()])
    for i, update in enumerate(updates):
        for name in reference:
            if name not in factors:
                out[i, 0] += update.delta[name].double().pow(2).sum()
    return out


def largest_scale_within(coefficients: torch.Tensor, bound: float) -> float:
    """The largest ``c`` in ``[0, 1]`` with ``a2 c^2 + a3 c^3 + a4 c^4 <= bound^2``: 1 when
    the whole update is within ``bound``, else the largest root in ``(0, 1)`` of
    ``a4 c^4 + a3 c^3 + a2 c^2 = bound^2`` (the squared norm is 0 at ``c = 0`` and above
    ``bound^2`` at 1, so there is one): the least shrinking that bounds the change."""
    import numpy as np

    a2, a3, a4 = (float(v) for v in coefficients)
    if a2 + a3 + a4 <= bound * bound:
        return 1.0
    roots = np.roots([a4, a3, a2, 0.0, -bound * bound])
    real = [r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and 0 < r.real < 1]
    return float(max(real, default=0.0))
