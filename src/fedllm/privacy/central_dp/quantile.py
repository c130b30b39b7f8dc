"""Adaptive clipping: a clip norm that follows a quantile of the update norms, privately.

Andrew et al. (2021), "Differentially Private Learning with Adaptive Clipping": each
client reports one bit, whether its update fitted under the clip (``clip/clipped``
is 0); the server adds Gaussian noise to the **centred** count of those bits, the sum
of ``b_i - 1/2`` (as their Algorithm 1 and TF Privacy's ``QuantileEstimatorQuery``
do), divides by the cohort, adds 1/2 back, and moves the clip geometrically toward
the target quantile: ``C <- C * exp(-lr * (fraction_unclipped - quantile))``.

Centring is what makes the privacy split of :mod:`fedllm.privacy.plan` hold: adding
or removing a client moves the centred count by at most 1/2 (the plain count by 1),
and replacing one moves it by at most 1 (either way). Under fixed-size cohorts the
divisor is the accepted count n and centring changes nothing numerically,
``(sum b - n/2 + noise) / n + 1/2 = (sum b + noise) / n``; under Poisson sampling the
divisor is the expected cohort and the two differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedllm.pipeline.stage import RoundReport
from fedllm.seeding import privacy_seed

CLIPPED_METRIC = "clip/clipped"
"""The clip stage's report, per client: 1 if its update was scaled down, else 0."""


@dataclass(frozen=True)
class QuantileClip:
    """A clip norm estimated from the rounds' noisy counts of unclipped updates.

    Attributes:
        start: the clip norm of the first round (> 0).
        quantile: the fraction of updates meant to fit under the clip (0 < q < 1).
        lr: the geometric learning rate (> 0).
        count_noise: std of the Gaussian noise on the count (>= 0).
        expected: the divisor of the noisy count: the expected cohort under Poisson
            sampling; None: the round's accepted updates.
        secure: draw the count's noise from a generator seeded by the OS CSPRNG
            (``run.randomness = 'secure'``); False: from the round's derived seed.
    """

    start: float
    quantile: float
    lr: float
    count_noise: float
    expected: float | None = None
    secure: bool = False

    def initial(self) -> float:
        return self.start

    def next(self, value: float, report: RoundReport) -> float:
        """The clip for the round after ``report``'s (unchanged if nothing was accepted)."""
        if report.num_accepted == 0:
            return value
        centred = centred_count(report.client_metrics)
        if self.count_noise > 0:
            seed = privacy_seed(report.seed, "clip-count", secure=self.secure)
            generator = torch.Generator().manual_seed(seed)
            centred += self.count_noise * float(
                torch.randn((), generator=generator, dtype=torch.float64)
            )
        denominator = self.expected if self.expected is not None else report.num_accepted
        fraction = centred / denominator + 0.5
        return value * math.exp(-self.lr * (fraction - self.quantile))


def centred_count(client_metrics: Sequence[Mapping[str, float]]) -> float:
    """The statistic the count noise is added to: the sum over clients of
    ``unclipped - 1/2`` (each term in [-1/2, 1/2]).

    Raises:
        ValueError: a client's metrics lack its clipped bit (a protocol that keeps
            client metrics from the server cannot run adaptive clipping).
    """
    missing = sum(CLIPPED_METRIC not in m for m in client_metrics)
    if missing:
        raise ValueError(
            f"adaptive clipping needs every accepted client's {CLIPPED_METRIC!r} bit; "
            f"{missing} of {len(client_metrics)} replies lack it"
        )
    return sum((1.0 - m[CLIPPED_METRIC]) - 0.5 for m in client_metrics)
