"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML).

``g_k = 1 / ((1 - 2 beta) n) * sum_{x in U_k} x``, where ``U_k`` is the set of the
``n`` values of coordinate ``k`` with the largest and the smallest ``beta`` fraction
removed.

fedllm: ``x_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``). The paper takes
``beta n`` to be an integer; fedllm removes ``b = floor(beta n)`` values from each end
and averages the ``n - 2b`` left (``beta < 1/2`` keeps at least one). The client
weights are not used (an order statistic; the paper's rule is unweighted). Excludes no
client: the values removed differ by coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import AGGREGATORS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class TrimmedMeanSettings(Section):
    """``[aggregator.trimmed_mean]``."""

    beta: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="Fraction of the values trimmed from each end of every coordinate "
        "(floor(beta n) values each side); 0: the mean.",
    )


def trimmed_count(beta: float, n: int) -> int:
    """Values removed from each end: ``floor(beta n)`` (with a guard against
    ``0.3 * 10 = 2.9999...``)."""
    return math.floor(beta * n + 1e-9)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean:
    """``server.aggregator = "trimmed_mean"``: the coordinate-wise trimmed mean."""

    name = "trimmed_mean"
    linear = False
    settings = TrimmedMeanSettings

    def __init__(self, settings: TrimmedMeanSettings | None = None) -> None:
        self.beta = (settings or TrimmedMeanSettings()).beta

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import stack, unstack

        rows = stack(updates, reference)
        n = rows.shape[0]
        b = trimmed_count(self.beta, n)
        kept = rows.sort(dim=0).values[b : n - b]
        return BatchResult(unstack(kept.mean(dim=0), reference))
