"""Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML).

With ``n >= 4f + 3`` updates of which at most ``f`` are Byzantine: select
``theta = n - 2f`` updates with Krum (:mod:`.krum`), then for every coordinate ``k``
average the ``beta = theta - 2f = n - 4f`` selected values closest to the selection's
median: ``g_k = 1/beta * sum_{x in M_k} x``,
``M_k = argmin_{|H| = beta} sum_{x in H} |x - med_k|``.

fedllm: the selection is Multi-Krum's, the ``theta`` best scores of one scoring over
all ``n`` updates (each over ``n - f - 2`` neighbours). The paper applies Krum
recursively to the updates not yet selected, its last picks scoring over ``f - 1`` or
fewer neighbours, where ties decide. ``x_i`` is client ``i``'s flattened full update
(all its tensors concatenated; LoRA's ``A`` and ``B`` as coordinates), or with
``distance = "lora_product"`` the selection measures each LoRA layer's ``B A``. Equal
distances to the median: the smaller value is kept. Client weights are not used (order
statistics; the paper's rule is unweighted). The clients not selected are ``excluded``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import AGGREGATORS
from fedllm.security.defenses.krum import Distance
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class BulyanSettings(Section):
    """``[aggregator.bulyan]``."""

    f: int = Field(1, ge=0, description="Byzantine clients assumed; needs n >= 4f + 3 updates.")
    distance: Distance = Field(
        "flat",
        description="Krum's selection on 'flat' updates or on each LoRA layer's "
        "'lora_product' B A.",
    )


def closest_to_median_mean(selected: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``beta`` values of ``selected`` (``[theta, d]``)
    closest to their median (ties: the smaller value)."""
    import torch

    from fedllm.security.defenses.flat import coordinate_median

    ordered = selected.sort(dim=0).values
    gap = (ordered - coordinate_median(ordered)).abs()
    nearest = torch.argsort(gap, dim=0, stable=True)[:beta]
    return ordered.gather(0, nearest).mean(dim=0)


@AGGREGATORS.register("bulyan")
class Bulyan:
    """``server.aggregator = "bulyan"``: Krum's selection of ``n - 2f``, then the
    coordinate-wise mean of the ``n - 4f`` values closest to the median."""

    name = "bulyan"
    linear = False
    settings = BulyanSettings

    def __init__(self, settings: BulyanSettings | None = None) -> None:
        chosen = settings or BulyanSettings()
        self.f = chosen.f
        self.distance: Distance = chosen.distance

    @staticmethod
    def fewest_updates(settings: BulyanSettings) -> tuple[int, str]:
        """The fewest updates a round needs: ``4f + 3``."""
        return 4 * settings.f + 3, f"n >= 4f + 3 with f = {settings.f}"

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import need, stack, unstack
        from fedllm.security.defenses.krum import krum_select, squared_distances_of

        rows = stack(updates, reference)
        n = rows.shape[0]
        need("Bulyan", n, *self.fewest_updates(BulyanSettings(f=self.f)))
        distances = squared_distances_of(updates, reference, rows, self.distance)
        chosen = krum_select(distances, self.f, n - 2 * self.f)
        combined = closest_to_median_mean(rows[chosen], n - 4 * self.f)
        excluded = [u.client_id for i, u in enumerate(updates) if i not in set(chosen)]
        return BatchResult(unstack(combined, reference), excluded)
