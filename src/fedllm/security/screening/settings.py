"""``[algorithm.screening]``: the per-round screen of client updates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedllm.settings import Section


class ScreeningSettings(Section):
    """``[algorithm.screening]``."""

    enabled: bool = Field(
        False, description="Screen every round's updates before the aggregator combines them."
    )
    threshold: float = Field(
        3.5,
        gt=0,
        description="Flag a client whose feature lies more than this many robust z-scores "
        "(x - median) / (1.4826 MAD) from the round's median, on either side (Iglewicz and "
        "Hoaglin's 3.5).",
    )
    action: Literal["flag", "exclude"] = Field(
        "flag",
        description="'flag': record the flags, aggregate every update; 'exclude': leave the "
        "flagged clients out of the aggregate (recorded as excluded).",
    )
