"""Server-side norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated
Learning?").

``dw = sum_k (n_k / N) * dw_k / max(1, ||dw_k||_2 / M)``: every update clipped to norm
``M`` by the server, then the weighted mean.

fedllm: ``dw_k`` is client ``k``'s flattened full update (all its tensors concatenated,
one norm for all; by default LoRA's ``A`` and ``B`` as coordinates), ``n_k / N`` its
normalised aggregation weight (``server.weighting``). With ``measure = "lora_product"``
the norm is that of the change the update makes to the model, ``sum_layers ||(B + dB)
(A + dA) - B A||_F^2`` plus every other tensor's (the ``alpha / r`` scale left out), and
an update beyond ``M`` has its factors' deltas scaled by the largest ``c`` whose change
is at most ``M`` long (a root of a quartic in ``c``): the product is what
changes the model, but the server can only scale what was sent, the factors. Unlike
``pipeline.clip_norm`` (a stage each client applies to its own update), the server
clips what it received, so a client that skips its clip is bounded all the same.
Excludes no client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

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
    measure: Literal["flat", "lora_product"] = Field(
        "flat",
        description="What is bounded: 'flat', the update's tensors as one vector (LoRA's A "
        "and B as coordinates); 'lora_product', the change each LoRA layer's B A makes "
        "(plus the other tensors), by scaling the factors' deltas.",
    )


@AGGREGATORS.register("norm_bound")
class NormBound:
    """``server.aggregator = "norm_bound"``: each update clipped to ``bound``, then the
    weighted mean."""

    name = "norm_bound"
    linear = False
    settings = NormBoundSettings

    def __init__(self, settings: NormBoundSettings | None = None) -> None:
        settings = settings or NormBoundSettings()
        self.bound = settings.bound
        self.measure = settings.measure

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        import torch

        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import norms, stack, unstack, weighted_mean, weights_of
        from fedllm.security.defenses.product import (
            largest_scale_within,
            product_norm_polynomials,
        )

        rows = stack(updates, reference)
        if self.measure == "lora_product":
            polynomials = product_norm_polynomials(updates, reference)
            scales = [largest_scale_within(p, self.bound) for p in polynomials]
            scale = torch.tensor(scales, dtype=torch.float64)
        else:
            scale = 1.0 / (norms(rows) / self.bound).clamp(min=1.0)
        combined = weighted_mean(rows * scale.to(rows.dtype)[:, None], weights_of(updates))
        return BatchResult(unstack(combined, reference))
