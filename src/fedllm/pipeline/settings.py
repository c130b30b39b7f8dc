"""Config section of the aggregation pipeline: ``[pipeline]``."""

from __future__ import annotations

from pydantic import Field

from fedllm.settings import Section


class PipelineConfig(Section):
    clip_norm: float | None = Field(
        None, gt=0, description="Clip each client update to this global L2 norm; none: off."
    )
