"""Min-max and min-sum (Shejwalkar, Houmansadr 2021, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS).

The colluders send ``m = mu + gamma p``: their mean update ``mu`` moved along a
perturbation ``p`` as far as a distance budget allows, ``gamma`` the largest that keeps

- **min-max**: ``max_i ||m - x_i|| <= max_{i,j} ||x_i - x_j||`` (no farther from any
  update than the two farthest updates are from each other);
- **min-sum**: ``sum_i ||m - x_i||^2 <= max_i sum_j ||x_i - x_j||^2`` (no larger sum of
  squared distances than the worst update's).

``p`` (``perturbation``): ``"unit"`` the inverse unit vector ``-mu / ||mu||``, ``"std"``
the inverse standard deviation ``-sigma``, ``"sign"`` the inverse sign ``-sign(mu)``.

fedllm: partial knowledge, the paper's "AGR-agnostic, no knowledge of benign
gradients" case: ``x_i``, ``mu`` and ``sigma`` are the colluders' own honest updates
(flattened), their mean and sample standard deviation. The paper finds ``gamma`` by a
halving search from ``gamma_init = 10`` down to a step of ``1e-5``; fedllm solves the
same constraint exactly: each squared distance is a quadratic in ``gamma``,
``||mu - x_i||^2 + 2 gamma <p, mu - x_i> + gamma^2 ||p||^2``, and ``gamma`` is the smallest
of their largest roots (min-max) or the largest root of their sum (min-sum), in float64.
``gamma`` is not capped (the search's is 20) and is exact at any scale of the updates.
A zero ``p`` (one colluder's ``sigma``, a zero ``mu``) leaves ``gamma = 0``: the colluders
send their mean.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    import torch

Perturbation = Literal["unit", "std", "sign"]
Budget = Literal["max", "sum"]


class MinMaxSettings(Section):
    """``[attack.min_max]`` and ``[attack.min_sum]``."""

    perturbation: Perturbation = Field(
        "unit",
        description="The direction the colluders move their mean in: 'unit' (-mu/||mu||), "
        "'std' (-sigma, coordinate-wise) or 'sign' (-sign(mu)).",
    )


def perturbation(rows: torch.Tensor, mean: torch.Tensor, kind: Perturbation) -> torch.Tensor:
    """``p`` for the rows, given their ``mean`` (float64)."""
    import torch

    from fedllm.security.attacks.moments import mean_and_std

    if kind == "std":
        return -mean_and_std(rows)[1]
    if kind == "sign":
        return -torch.sign(mean)
    norm = float(mean.norm())
    return -mean / norm if norm > 0 else torch.zeros_like(mean)


def largest_gamma(rows: torch.Tensor, mean: torch.Tensor, p: torch.Tensor, budget: Budget) -> float:
    """The largest ``gamma >= 0`` with ``mean + gamma p`` inside the budget of
    Shejwalkar & Houmansadr's min-max (``"max"``) or min-sum (``"sum"``) over the rows."""
    from fedllm.security.defenses.flat import squared_distances

    q = float(p @ p)
    if q == 0:
        return 0.0
    a: list[float] = []  # ||mu - x_i||^2
    b: list[float] = []  # <p, mu - x_i>
    for row in rows:
        offset = mean - row.double()
        a.append(float(offset @ offset))
        b.append(float(p @ offset))
    pairs = squared_distances(rows)
    if budget == "max":
        limit = float(pairs.max())
        return min(_largest_root(q, bi, ai - limit) for ai, bi in zip(a, b, strict=True))
    limit = float(pairs.sum(dim=1).max())
    return _largest_root(len(a) * q, sum(b), sum(a) - limit)


def _largest_root(q: float, b: float, c: float) -> float:
    """The largest root of ``q g^2 + 2 b g + c`` (``q > 0``, ``c <= 0``, so it is >= 0)."""
    return max(0.0, (-b + math.sqrt(max(0.0, b * b - q * c))) / q)


@ATTACKS.register("min_max")
class MinMax:
    """``attack.update = "min_max"``: every colluder sends ``mu + gamma p``, ``gamma`` as
    large as keeps it within the farthest two colluders' distance of each."""

    kind = "update"
    colluding = True
    settings = MinMaxSettings
    budget: Budget = "max"

    def __init__(self, settings: MinMaxSettings | None = None) -> None:
        self.perturbation: Perturbation = (settings or MinMaxSettings()).perturbation

    def gamma(self, rows: torch.Tensor) -> float:
        """``gamma`` for the colluders' ``rows``."""
        from fedllm.security.attacks.moments import row_mean

        mean = row_mean(rows)
        return largest_gamma(rows, mean, perturbation(rows, mean, self.perturbation), self.budget)

    def craft(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        from fedllm.security.attacks.moments import row_mean

        mean = row_mean(rows)
        p = perturbation(rows, mean, self.perturbation)
        return (mean + largest_gamma(rows, mean, p, self.budget) * p).to(rows.dtype)


@ATTACKS.register("min_sum")
class MinSum(MinMax):
    """``attack.update = "min_sum"``: every colluder sends ``mu + gamma p``, ``gamma`` as
    large as keeps its sum of squared distances to the colluders within the worst one's."""

    budget: Budget = "sum"
