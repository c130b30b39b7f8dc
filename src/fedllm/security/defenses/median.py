"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML).

``g_k = med{x_i,k : i = 1..n}`` for every coordinate ``k``: the usual one-dimensional
median (for even ``n``, the mean of the two middle values).

fedllm: ``x_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``). The client weights are
not used (an order statistic; the paper's rule is unweighted). Excludes no client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedllm.components import AGGREGATORS

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


@AGGREGATORS.register("median")
class CoordinateMedian:
    """``server.aggregator = "median"``: the coordinate-wise median of the updates."""

    name = "median"
    linear = False

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import coordinate_median, stack, unstack

        return BatchResult(unstack(coordinate_median(stack(updates, reference)), reference))
