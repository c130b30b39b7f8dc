"""A Little Is Enough (Baruch, Baruch, Goldberg 2019, "A Little Is Enough: Circumventing
Defenses For Distributed Learning", NeurIPS).

The ``m`` colluders of a round of ``n`` updates compute, per coordinate ``j``, the mean
``mu_j`` and standard deviation ``sigma_j`` of their own honest updates and all send
``p_j = mu_j - z sigma_j``: close enough to the crowd to pass every robust rule, all
pulling the same way. The paper's ``z_max``: with ``s = floor(n/2 + 1) - m`` benign
clients the attackers need on their side for a majority, ``z_max = Phi^-1((n - s) / n)``
(``Phi``: the standard normal CDF).

fedllm: ``x`` is the flattened update (LoRA's ``A`` and ``B`` as coordinates). The paper
writes ``mu + z sigma`` on *gradients*; an update is minus a gradient step, so the same
direction on updates is ``mu - z sigma``. ``sigma`` is the sample standard deviation
(``n - 1`` in the denominator, as the paper's code), zero when a round has one colluder
(who then sends its own update). ``z`` left out is ``z_max`` recomputed every round from
that round's ``n`` (accepted updates, colluders included) and ``m`` (colluders among
them), ``s`` at least 1 (a majority of colluders would make ``z_max`` infinite). Partial
knowledge: ``mu`` and ``sigma`` are the colluders' own, never the benign clients'.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    import torch


class AlieSettings(Section):
    """``[attack.alie]``."""

    z: float | None = Field(
        None,
        ge=0,
        description="Standard deviations the colluders move from their mean; none: the "
        "paper's z_max from the round's n updates and m colluders.",
    )


def z_max(n: int, m: int) -> float:
    """Baruch et al.'s ``z_max = Phi^-1((n - s) / n)``, ``s = max(1, floor(n/2 + 1) - m)``
    (0 when that quantile is not inside (0, 1): a round of one update)."""
    s = max(1, math.floor(n / 2 + 1) - m)
    p = (n - s) / n
    return NormalDist().inv_cdf(p) if 0 < p < 1 else 0.0


@ATTACKS.register("alie")
class Alie:
    """``attack.update = "alie"``: every colluder sends ``mu - z sigma``."""

    kind = "update"
    colluding = True
    settings = AlieSettings

    def __init__(self, settings: AlieSettings | None = None) -> None:
        self.z = (settings or AlieSettings()).z

    def z_for(self, n: int, m: int) -> float:
        """The ``z`` used in a round of ``n`` updates with ``m`` colluders."""
        return self.z if self.z is not None else z_max(n, m)

    def craft(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        from fedllm.security.attacks.moments import mean_and_std

        mean, std = mean_and_std(rows)
        return (mean - self.z_for(n, rows.shape[0]) * std).to(rows.dtype)
