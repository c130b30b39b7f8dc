"""Geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade and
Harchaoui 2022, "Robust Aggregation for Federated Learning").

``v = argmin_z g(z)``, ``g(z) = sum_i alpha_i ||z - w_i||``, approximated from
``v_0 = sum_i alpha_i w_i / sum_i alpha_i`` by
``beta_i = alpha_i / max(nu, ||v_t - w_i||)``, ``v_{t+1} = sum_i beta_i w_i / sum_i beta_i``,
(``nu`` keeps the weights finite as ``v`` nears a ``w_i``) for at most
``max_iterations`` steps, stopping once ``g`` changes by less than
``tolerance * g(v_{t+1})`` (the stopping rule of the authors' code).

fedllm: ``w_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``), ``alpha_i`` its
aggregation weight (``server.weighting``). The paper reports 3 iterations as enough;
fedllm's default allows 100, stopped early by the tolerance: far outliers pull the
starting mean away and each step recovers a constant fraction. Excludes no client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import AGGREGATORS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class GeometricMedianSettings(Section):
    """``[aggregator.geometric_median]``."""

    nu: float = Field(
        1e-6, gt=0, description="Smoothing: distances below it count as nu (update units)."
    )
    max_iterations: int = Field(100, ge=1, description="Most Weiszfeld steps.")
    tolerance: float = Field(
        1e-6, ge=0, description="Stop when the objective changes by less than this fraction."
    )


def smoothed_weiszfeld(
    rows: torch.Tensor, alphas: torch.Tensor, settings: GeometricMedianSettings
) -> torch.Tensor:
    """RFA's smoothed Weiszfeld over the rows with weights ``alphas`` (float64)."""
    from fedllm.security.defenses.flat import norms, weighted_mean

    def objective(v: torch.Tensor) -> float:
        return float((alphas * norms(rows - v)).sum())

    v = weighted_mean(rows, alphas)
    value = objective(v)
    for _ in range(settings.max_iterations):
        betas = alphas / norms(rows - v).clamp(min=settings.nu)
        v = weighted_mean(rows, betas)
        previous, value = value, objective(v)
        if abs(previous - value) < settings.tolerance * value:
            break
    return v


@AGGREGATORS.register("geometric_median")
class GeometricMedian:
    """``server.aggregator = "geometric_median"``: RFA's weighted geometric median."""

    name = "geometric_median"
    linear = False
    settings = GeometricMedianSettings

    def __init__(self, settings: GeometricMedianSettings | None = None) -> None:
        self.chosen = settings or GeometricMedianSettings()

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import stack, unstack, weights_of

        rows = stack(updates, reference)
        median = smoothed_weiszfeld(rows, weights_of(updates), self.chosen)
        return BatchResult(unstack(median, reference))
