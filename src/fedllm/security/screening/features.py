"""Spectral features of a client's update, from LoRA's per-layer product.

A LoRA client changes a layer's weight by ``dP = (B + dB)(A + dA) - B A`` (times the
``alpha / r`` scale, one constant, left out). ``dP = L R`` with ``L = [B + dB, B]``
(``out x 2r``) and ``R = [A + dA; -A]`` (``2r x in``), so its singular values are those
of the ``2r x 2r`` matrix ``R_L R_R^T`` from the thin QR factorisations ``L = Q_L R_L``
and ``R^T = Q_R R_R``: ``out x in`` is never formed. Per client:

- ``norm``: ``sqrt(sum_layers ||dP||_F^2 + sum_other ||d||^2)``, the update's size as
  the model sees it (every tensor that is not a LoRA factor counts flat);
- ``top``: the largest leading singular value ``sigma_1(dP)`` over the layers;
- ``concentration``: ``sum_layers sigma_1^2 / sum_layers ||dP||_F^2``, the share of
  the change's energy in each layer's top direction (1: rank one everywhere).

An update without LoRA factors (``method.kind = "full"``, prompts) has ``norm`` only.
"""

from __future__ import annotations

import math

import torch

from fedllm.model.methods.lora import lora_pairs
from fedllm.types import Params

LORA_FEATURES = ("norm", "top", "concentration")
"""The features of a LoRA update (anything else: ``norm`` alone)."""


def product_spectrum(
    a: torch.Tensor, b: torch.Tensor, da: torch.Tensor, db: torch.Tensor
) -> torch.Tensor:
    """The singular values of ``(B + dB)(A + dA) - B A``, largest first (float64).

    Args:
        a: the broadcast ``lora_A``, ``[r, in]``.
        b: the broadcast ``lora_B``, ``[out, r]``.
        da: the client's change of ``A``.
        db: the client's change of ``B``.
    """
    a, b, da, db = (t.double() for t in (a, b, da, db))
    left = torch.cat([b + db, b], dim=1)
    right = torch.cat([a + da, -a], dim=0)
    _, r_left = torch.linalg.qr(left)
    _, r_right = torch.linalg.qr(right.T)
    spectrum: torch.Tensor = torch.linalg.svdvals(r_left @ r_right.T)
    return spectrum


def update_features(delta: Params, reference: Params) -> dict[str, float]:
    """``norm`` (and, for LoRA, ``top`` and ``concentration``) of one client's ``delta``
    against the broadcast ``reference``."""
    pairs = lora_pairs(reference)
    factors = {name for pair in pairs for name in pair}
    layer_energy = top_energy = top = 0.0
    for a_name, b_name in pairs:
        spectrum = product_spectrum(
            reference[a_name], reference[b_name], delta[a_name], delta[b_name]
        )
        layer_energy += float(spectrum.pow(2).sum())
        top_energy += float(spectrum[0] ** 2)
        top = max(top, float(spectrum[0]))
    other = sum(float(delta[n].double().pow(2).sum()) for n in reference if n not in factors)
    features = {"norm": math.sqrt(layer_energy + other)}
    if pairs:
        features["top"] = top
        features["concentration"] = top_energy / layer_energy if layer_energy > 0 else 0.0
    return features
