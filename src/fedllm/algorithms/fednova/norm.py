"""FedNova's normalised updates (Wang et al. 2020, "Tackling the Objective
Inconsistency Problem in Heterogeneous Federated Optimization").

A client that runs more local steps moves further; plain averaging then
optimises a skewed objective. Each client divides its update by ``a_i``, the
norm of its accumulated step coefficients, and the server rescales the mean
of the normalised updates by the cohort's effective steps
``tau_eff = sum_i w_i a_i / sum_i w_i``. With equal ``a_i`` this is FedAvg.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedllm.client.settings import ClientConfig
from fedllm.types import ClientUpdate

NORM_METRIC = "fednova_a"
"""Metric carrying a client's ``a_i`` to the server."""


def step_norm(cfg: ClientConfig, steps: int) -> float:
    """``a_i`` for ``steps`` local steps (the L1 norm of FedNova's coefficient vector).

    SGD with momentum rho: ``(tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)``;
    SGD with FedProx mu and learning rate eta: ``(1 - (1 - eta mu)^tau) / (eta mu)``;
    otherwise (plain SGD, AdamW) ``tau``. The paper's constant learning rate is
    assumed.
    """
    tau = float(steps)
    if cfg.optimizer == "sgd" and cfg.momentum > 0:
        rho = cfg.momentum
        return float((tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho))
    if cfg.optimizer == "sgd" and cfg.prox_mu > 0:
        shrink = cfg.lr * cfg.prox_mu
        return float((1 - (1 - shrink) ** tau) / shrink)
    return tau


def normalize(update: ClientUpdate, cfg: ClientConfig) -> ClientUpdate:
    """The update divided by its ``a_i`` (client side), with ``a_i`` in the metrics."""
    norm = step_norm(cfg, int(update.metrics["steps"]))
    with torch.no_grad():
        delta = {k: v / norm for k, v in update.delta.items()}
    return replace(update, delta=delta, metrics={**update.metrics, NORM_METRIC: norm})
