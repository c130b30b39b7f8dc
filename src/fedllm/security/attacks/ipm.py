"""Inner-product manipulation (Xie, Koyejo, Gupta 2020, "Fall of Empires: Breaking
Byzantine-tolerant SGD by Inner Product Manipulation", UAI).

Every Byzantine worker sends ``-epsilon`` times the mean of the correct gradients: a
small ``epsilon`` hides among them (median, Krum) while the aggregate's inner product
with the true direction turns negative, so a descent step goes uphill.

fedllm: partial knowledge: the mean is of the colluders' own honest updates (the paper's
attacker knows the correct workers' mean; the colluders' mean estimates it from their
own data). ``x`` is the flattened update. ``epsilon`` defaults to 0.5 (a choice: the
paper varies it; small values hide from order-statistic rules, large ones dominate a
mean).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    import torch


class IpmSettings(Section):
    """``[attack.ipm]``."""

    epsilon: float = Field(
        0.5, gt=0, description="The colluders send -epsilon times their mean update."
    )


@ATTACKS.register("ipm")
class Ipm:
    """``attack.update = "ipm"``: every colluder sends ``-epsilon * mean``."""

    kind = "update"
    colluding = True
    settings = IpmSettings

    def __init__(self, settings: IpmSettings | None = None) -> None:
        self.epsilon = (settings or IpmSettings()).epsilon

    def craft(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        from fedllm.security.attacks.moments import row_mean

        return (row_mean(rows) * -self.epsilon).to(rows.dtype)
