"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS).

With ``n`` updates of which at most ``f`` are Byzantine (``n > 2f + 2``), each update
``V_i`` scores ``s(i) = sum_{i -> j} ||V_i - V_j||^2`` over its ``n - f - 2`` nearest
other updates. Krum returns the update with the lowest score; Multi-Krum selects the
``m`` lowest-scoring updates and returns their average (``m = n - f`` in the paper's
experiments).

fedllm: ``V_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates), or with ``distance = "lora_product"`` distances
are measured on each LoRA layer's product ``B A`` (:mod:`.product`) while the selected
factors are still averaged as they came. Equal scores: the earlier update (arrival
order) is selected. Multi-Krum averages the selected updates with the client weights
(the paper: uniformly; the same under ``server.weighting = "uniform"``). The clients
not selected are ``excluded``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedllm.components import AGGREGATORS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params

Distance = Literal["flat", "lora_product"]


class KrumSettings(Section):
    """``[aggregator.krum]``."""

    f: int = Field(1, ge=0, description="Byzantine clients assumed; needs n > 2f + 2 updates.")
    distance: Distance = Field(
        "flat",
        description="'flat': distances between the flattened updates (LoRA's A and B as "
        "coordinates); 'lora_product': between each LoRA layer's product B A.",
    )


class MultiKrumSettings(KrumSettings):
    """``[aggregator.multi_krum]``."""

    m: int | None = Field(
        None, ge=1, description="Updates selected and averaged; none: n - f (the paper's)."
    )


def krum_scores(distances: torch.Tensor, f: int) -> torch.Tensor:
    """``s(i)``: the sum of update ``i``'s ``n - f - 2`` smallest squared distances to
    the others (``distances``: ``[n, n]`` squared distances)."""
    import torch

    n = distances.shape[0]
    others = distances.clone().fill_diagonal_(torch.inf)
    return others.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum_select(distances: torch.Tensor, f: int, m: int) -> list[int]:
    """The ``m`` updates with the lowest Krum scores, best first (ties: arrival order)."""
    scores = krum_scores(distances, f).tolist()
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))[:m]


def squared_distances_of(
    updates: Sequence[WeightedUpdate], reference: Params, rows: torch.Tensor, distance: Distance
) -> torch.Tensor:
    """Pairwise squared distances of the updates, flat or on LoRA's products."""
    if distance == "lora_product":
        from fedllm.security.defenses.product import product_squared_distances

        return product_squared_distances(updates, reference)
    from fedllm.security.defenses.flat import squared_distances

    return squared_distances(rows)


def krum_fewest(f: int) -> tuple[int, str]:
    """The fewest updates Krum's scores are defined for, and why."""
    return 2 * f + 3, f"n > 2f + 2 with f = {f}"


@AGGREGATORS.register("multi_krum")
class MultiKrum:
    """``server.aggregator = "multi_krum"``: the weighted mean of the ``m`` updates with
    the lowest Krum scores."""

    name = "multi_krum"
    linear = False
    settings: type[KrumSettings] = MultiKrumSettings
    rule = "Multi-Krum"

    def __init__(self, settings: KrumSettings | None = None) -> None:
        chosen = settings if settings is not None else self.settings()
        self.f = chosen.f
        self.distance: Distance = chosen.distance
        self.m: int | None = getattr(chosen, "m", 1)

    @classmethod
    def fewest_updates(cls, settings: KrumSettings) -> tuple[int, str]:
        """The fewest updates a round needs: ``2f + 3`` (and ``m``)."""
        count, why = krum_fewest(settings.f)
        m = getattr(settings, "m", None)
        if m is not None and m > count:
            return m, f"{why}, and m = {m} to select"
        return count, why

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import need, stack, unstack, weighted_mean, weights_of

        rows = stack(updates, reference)
        n = rows.shape[0]
        need(self.rule, n, *krum_fewest(self.f))
        m = self.m if self.m is not None else n - self.f
        if m > n:
            raise ValueError(f"{self.rule} selects m = {m} updates, but only {n} arrived")
        chosen = krum_select(
            squared_distances_of(updates, reference, rows, self.distance), self.f, m
        )
        if len(chosen) == 1:
            combined = rows[chosen[0]]
        else:
            combined = weighted_mean(rows[chosen], weights_of(updates)[chosen])
        excluded = [u.client_id for i, u in enumerate(updates) if i not in set(chosen)]
        return BatchResult(unstack(combined, reference), excluded)


@AGGREGATORS.register("krum")
class Krum(MultiKrum):
    """``server.aggregator = "krum"``: the update with the lowest Krum score."""

    name = "krum"
    settings = KrumSettings
    rule = "Krum"
