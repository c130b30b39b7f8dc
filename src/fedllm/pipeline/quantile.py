"""Adaptive clipping: a clip norm that follows a quantile of the update norms, privately.

Andrew et al. (2021), "Differentially Private Learning with Adaptive Clipping": each
client reports one bit, whether its update fitted under the clip (``clip/clipped``
is 0); the server adds Gaussian noise to the count of those bits, divides by the
cohort, and moves the clip geometrically toward the target quantile:
``C <- C * exp(-lr * (fraction_unclipped - quantile))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedllm.pipeline.stage import RoundReport
from fedllm.seeding import derive_seed

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
    """

    start: float
    quantile: float
    lr: float
    count_noise: float
    expected: float | None = None

    def initial(self) -> float:
        return self.start

    def next(self, value: float, report: RoundReport) -> float:
        """The clip for the round after ``report``'s (unchanged if nothing was accepted)."""
        if report.num_accepted == 0:
            return value
        unclipped = sum(1.0 - m.get(CLIPPED_METRIC, 0.0) for m in report.client_metrics)
        if self.count_noise > 0:
            generator = torch.Generator().manual_seed(derive_seed(report.seed, "clip-count"))
            unclipped += self.count_noise * float(
                torch.randn((), generator=generator, dtype=torch.float64)
            )
        denominator = self.expected if self.expected is not None else report.num_accepted
        fraction = unclipped / denominator
        return value * math.exp(-self.lr * (fraction - self.quantile))
