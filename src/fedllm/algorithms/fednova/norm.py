"""FedNova's normalised updates (Wang et al. 2020, "Tackling the Objective
Inconsistency Problem in Heterogeneous Federated Optimization").

A client that runs more local steps moves further; plain averaging then
optimises a skewed objective. Each client divides its update by ``a_i``, the
L1 norm of its accumulated gradient coefficients, and the server rescales the
mean of the normalised updates by the cohort's effective steps
``tau_eff = sum_i w_i a_i / sum_i w_i``. With equal ``a_i`` this is FedAvg.

The coefficients are those of the SGD the client ran: after ``tau`` steps
``w_tau - w_0 = -eta sum_k a_k g_k`` with ``eta`` the base learning rate and
``g_k`` the gradient of step ``k`` (before any term the optimizer adds). Torch's
SGD with momentum ``rho``, a learning rate ``eta_t`` per step (the schedule),
FedProx ``mu`` and L2 weight decay ``lambda``::

    v_t     = rho v_{t-1} + g_t + (mu + lambda) (w_t - w_0)   (+ lambda w_0, a constant)
    w_{t+1} = w_t - eta_t v_t

is linear in the ``g_k``, so :func:`step_coefficients` runs it once per step's
gradient (all at once, as a matrix). The paper's closed forms are its special
cases: ``tau`` (plain SGD), ``(tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)``
(momentum), ``(1 - (1 - eta mu)^tau) / (eta mu)`` (FedProx), all at a constant
learning rate. Weight decay's ``lambda w_0`` is a constant added to every
gradient, so the coefficients are those of ``g_k + lambda w_0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from numpy.typing import NDArray

from fedllm.client.settings import ClientConfig
from fedllm.types import ClientUpdate

NORM_METRIC = "fednova_a"
"""Metric carrying a client's ``a_i`` to the server."""

STEPS_HEURISTIC = "fednova_steps"
"""``server.normalize`` value of the heuristic outside the paper (any optimizer)."""


def step_coefficients(
    lrs: Sequence[float], base_lr: float, momentum: float = 0.0, shrink: float = 0.0
) -> NDArray[np.float64]:
    """FedNova's ``a``: how much step ``k``'s gradient moves the last iterate, in units
    of ``base_lr``.

    Args:
        lrs: the learning rate of each step, in order (the schedule's).
        base_lr: the configured learning rate ``eta``.
        momentum: SGD's ``rho`` (0 for none; no dampening, no Nesterov).
        shrink: ``mu + lambda``: FedProx's weight plus SGD's L2 weight decay.
    """
    tau = len(lrs)
    moved = np.zeros(tau)  # w_t - w_0 per unit gradient of each step (one column each)
    velocity = np.zeros(tau)
    for t, lr in enumerate(lrs):
        velocity = momentum * velocity + shrink * moved
        velocity[t] += 1.0  # step t's own gradient enters here
        moved = moved - lr * velocity
    return -moved / base_lr


def step_norm(
    lrs: Sequence[float], base_lr: float, momentum: float = 0.0, shrink: float = 0.0
) -> float:
    """``a_i = ||a||_1`` for SGD with these steps (see :func:`step_coefficients`)."""
    return float(np.abs(step_coefficients(lrs, base_lr, momentum, shrink)).sum())


def effective_steps(lrs: Sequence[float], base_lr: float) -> float:
    """The heuristic ``a_i`` of ``server.normalize = "fednova_steps"``: the steps
    weighted by their learning rate, ``sum_t eta_t / eta`` (``tau`` at a constant rate),
    whatever the optimizer; outside the paper for AdamW."""
    return float(sum(lr / base_lr for lr in lrs))


def client_norm(cfg: ClientConfig, normalize: str, lrs: Sequence[float]) -> float:
    """The client's ``a_i`` under ``server.normalize`` (``fednova`` needs SGD: checked
    when the config loads)."""
    if normalize == STEPS_HEURISTIC:
        return effective_steps(lrs, cfg.lr)
    return step_norm(lrs, cfg.lr, cfg.momentum, cfg.prox_mu + cfg.weight_decay)


def normalize(update: ClientUpdate, norm: float) -> ClientUpdate:
    """The update divided by its ``a_i`` (client side), with ``a_i`` in the metrics."""
    with torch.no_grad():
        delta = {k: v / norm for k, v in update.delta.items()}
    return replace(update, delta=delta, metrics={**update.metrics, NORM_METRIC: norm})
