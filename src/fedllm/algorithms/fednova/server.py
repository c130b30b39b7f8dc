"""FedNova, server half: the mean of normalised updates rescaled by ``tau_eff``."""

from __future__ import annotations

import math

from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import ClientUpdate, Params

TAU_METRIC = "fednova_tau_eff"
"""Record entry of the round's effective steps."""


def effective_steps(norms: list[float], weights: list[float]) -> float:
    """``tau_eff``: the weighted mean of the accepted clients' ``a_i``."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("effective steps of a cohort whose weights sum to 0")
    return sum(a * w for a, w in zip(norms, weights, strict=True)) / total


class FedNovaServer(ServerPlugin):
    """Refuses updates without a finite step norm; scales the aggregate by the accepted
    clients' weighted mean step norm (see :mod:`fedllm.algorithms.fednova.norm`).

    Args:
        norm_metric: the reply metric that carries a client's ``a_i``.
    """

    name = "fednova"

    def __init__(self, norm_metric: str) -> None:
        self.norm_metric = norm_metric
        self.norms: list[float] = []
        self.weights: list[float] = []

    def begin_round(self, ctx: RoundContext) -> None:
        self.norms, self.weights = [], []

    def check(self, ctx: RoundContext, update: ClientUpdate) -> str | None:
        norm = update.metrics.get(self.norm_metric)
        if not isinstance(norm, float) or not math.isfinite(norm) or norm <= 0:
            return f"FedNova needs a finite step norm {self.norm_metric} > 0, got {norm!r}"
        return None

    def accept(self, ctx: RoundContext, update: ClientUpdate, weight: float) -> None:
        self.norms.append(update.metrics[self.norm_metric])
        self.weights.append(weight)

    def scale(self) -> float:
        """``tau_eff`` of the round so far (1 before any accepted weight)."""
        return effective_steps(self.norms, self.weights) if sum(self.weights) > 0 else 1.0

    def process(self, ctx: RoundContext, aggregate: Params) -> Params:
        scale = self.scale()
        return {name: delta * scale for name, delta in aggregate.items()}

    def end_round(self, ctx: RoundContext) -> None:
        ctx.record.extra[TAU_METRIC] = self.scale()
