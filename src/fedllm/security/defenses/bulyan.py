"""Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML).

With ``n >= 4f + 3`` updates of which at most ``f`` are Byzantine: select
``theta = n - 2f`` updates by applying Krum (:mod:`.krum`) recursively, ``theta``
times: Krum picks one update of the remaining set ``R`` (initially all ``n``), which
moves from ``R`` to the selection ``S``. Then for every coordinate ``k`` average the
``beta = theta - 2f = n - 4f`` values of ``S`` closest to their median:
``g_k = 1/beta * sum_{x in M_k} x``, ``M_k = argmin_{|H| = beta} sum_{x in H} |x - med_k|``.

Each pick scores the updates of ``R`` only, on their distances to the others of ``R``:
``s(i) = sum_{i -> j} ||x_i - x_j||^2`` over the ``|R| - f - 2`` nearest. ``|R|`` ends
at ``2f + 1``, so for ``f >= 2`` the last picks score over ``f - 1 >= 1`` neighbours,
but for ``f <= 1`` the count falls below 1: ``f = 1``'s last pick (``|R| = 3``: 0) and
``f = 0``'s last two (``|R| = 2``: 0, ``|R| = 1``: -1). fedllm counts
``max(1, |R| - f - 2)`` neighbours, at most ``|R| - 1``, as Flower's
``aggregate_bulyan`` does (its Krum clamps the count the same way): such a pick still
compares each update with its nearest other instead of scoring every update 0 and
leaving the pick to arrival order, and a lone last update scores 0. Equal scores: the
earlier update (arrival order), as Krum. A pick over one neighbour (the last one or two
for ``f <= 2``) ties the two updates of the closest remaining pair; two identical
updates score 0 there and one of them is selected (the paper allows up to ``f``
Byzantine updates in ``S``; the second step bounds their effect). The distances are
computed once (``n x n``); each pick uses their rows and columns of ``R``.

fedllm: ``x_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates), or with ``distance = "lora_product"`` the
selection measures each LoRA layer's ``B A``. Equal distances to the median: the smaller
value is kept. Client weights are not used (order statistics; the paper's rule is
unweighted). The clients not selected are ``excluded``.
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


def recursive_krum_select(distances: torch.Tensor, f: int, theta: int) -> list[int]:
    """Bulyan's selection: ``theta`` times, the update of the remaining set ``R`` with
    the lowest Krum score among ``R`` (over its ``max(1, |R| - f - 2)`` nearest others
    in ``R``, at most ``|R| - 1``; ties: arrival order), moved out of ``R``. Returns the
    picks in order (``distances``: ``[n, n]`` squared distances)."""
    import torch

    remaining = list(range(distances.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        among = distances[remaining][:, remaining].fill_diagonal_(torch.inf)
        nearest = min(max(1, len(remaining) - f - 2), len(remaining) - 1)
        scores = among.sort(dim=1).values[:, :nearest].sum(dim=1).tolist()
        best = min(range(len(remaining)), key=lambda i: (scores[i], i))
        chosen.append(remaining.pop(best))
    return chosen


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
    """``server.aggregator = "bulyan"``: Krum applied recursively selects ``n - 2f``,
    then the coordinate-wise mean of the ``n - 4f`` values closest to the median."""

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
        from fedllm.security.defenses.krum import squared_distances_of

        rows = stack(updates, reference)
        n = rows.shape[0]
        need("Bulyan", n, *self.fewest_updates(BulyanSettings(f=self.f)))
        distances = squared_distances_of(updates, reference, rows, self.distance)
        chosen = recursive_krum_select(distances, self.f, n - 2 * self.f)
        combined = closest_to_median_mean(rows[chosen], n - 4 * self.f)
        kept = set(chosen)
        excluded = [u.client_id for i, u in enumerate(updates) if i not in kept]
        return BatchResult(unstack(combined, reference), excluded)
