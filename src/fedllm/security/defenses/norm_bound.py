"""Server-side norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated
Learning?").

``dw = sum_k (n_k / N) * dw_k / max(1, ||dw_k||_2 / M)``: every update clipped to norm
``M`` by the server, then the weighted mean.

fedllm: ``dw_k`` is client ``k``'s flattened full update (all its tensors concatenated,
one norm for all: LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``),
``n_k / N`` its normalised aggregation weight (``server.weighting``). Unlike
``pipeline.clip_norm`` (a stage each client applies to its own update), the server
clips what it received, so a client that skips its clip is bounded all the same.
Excludes no client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import AGGREGATORS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class NormBoundSettings(Section):
    """``[aggregator.norm_bound]``."""

    bound: float = Field(
        1.0,
        gt=0,
        description="M: the largest L2 norm an update keeps (update units; choose it from "
        "the norms honest updates have).",
    )


@AGGREGATORS.register("norm_bound")
class NormBound:
    """``server.aggregator = "norm_bound"``: each update clipped to ``bound``, then the
    weighted mean."""

    name = "norm_bound"
    linear = False
    settings = NormBoundSettings

    def __init__(self, settings: NormBoundSettings | None = None) -> None:
        self.bound = (settings or NormBoundSettings()).bound

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import norms, stack, unstack, weighted_mean, weights_of

        rows = stack(updates, reference)
        scale = 1.0 / (norms(rows) / self.bound).clamp(min=1.0)
        combined = weighted_mean(rows * scale.to(rows.dtype)[:, None], weights_of(updates))
        return BatchResult(unstack(combined, reference))
