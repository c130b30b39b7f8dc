"""Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for
Byzantine Robust Optimization", ICML).

``v_{l+1} = v_l + 1/n * sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)`` for ``l = 0
.. L - 1``: each update's pull on ``v`` is clipped to ``tau``.

fedllm: ``x_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``), and the ``1/n`` mean
is weighted by the client weights (``server.weighting = "uniform"``: the paper's).
The paper starts from the previous round's aggregate (with worker momentum); fedllm
keeps no aggregator state across rounds (it would have to be checkpointed with the
server to resume bit for bit), so ``v_0`` is the coordinate-wise median of the round's
updates (``start = "median"``, robust for fewer than half Byzantine) or zero
(``start = "zero"``: the result then moves at most ``L * tau`` from zero). Not the
mean: far outliers would move it, and each step recovers at most ``tau``. Excludes no
client.
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


class CenteredClipSettings(Section):
    """``[aggregator.centered_clip]``."""

    tau: float = Field(
        1.0,
        gt=0,
        description="Clip radius: the largest L2 pull one update has on each step (update units).",
    )
    iterations: int = Field(3, ge=1, description="L: clipping steps.")
    start: Literal["median", "zero"] = Field(
        "median", description="v_0: the coordinate-wise median of the updates, or zero."
    )


def centered_clip(
    rows: torch.Tensor, weights: torch.Tensor, settings: CenteredClipSettings
) -> torch.Tensor:
    """``v_L`` over the rows, each step's mean weighted by ``weights``."""
    import torch

    from fedllm.security.defenses.flat import coordinate_median, norms, weighted_mean

    if settings.start == "median":
        v = coordinate_median(rows)
    else:
        v = torch.zeros(rows.shape[1], dtype=rows.dtype)
    for _ in range(settings.iterations):
        gaps = rows - v
        distance = norms(gaps)
        keep = torch.where(distance > settings.tau, settings.tau / distance, 1.0)
        v = v + weighted_mean(gaps * keep.to(rows.dtype)[:, None], weights)
    return v


@AGGREGATORS.register("centered_clip")
class CenteredClip:
    """``server.aggregator = "centered_clip"``: ``iterations`` steps of centered
    clipping with radius ``tau``."""

    name = "centered_clip"
    linear = False
    settings = CenteredClipSettings

    def __init__(self, settings: CenteredClipSettings | None = None) -> None:
        self.chosen = settings or CenteredClipSettings()

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import stack, unstack, weights_of

        rows = stack(updates, reference)
        combined = centered_clip(rows, weights_of(updates), self.chosen)
        return BatchResult(unstack(combined, reference))
