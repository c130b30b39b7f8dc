"""Central Gaussian noise on the aggregate of clipped updates (the DP-FedAvg mechanism).

With every update clipped to norm C and uniform weights, one client moves the sum
of the n accepted updates by at most C; Gaussian noise of std ``z x C`` on that sum
makes the round a Gaussian mechanism of noise multiplier z, which
:mod:`fedllm.privacy.accountant` accounts. The aggregate here is the mean, so the
noise added to it has std ``z x C / n``.
"""

from __future__ import annotations

import torch

from fedllm.pipeline.stage import (
    Parameter,
    PipelineError,
    Requirements,
    RoundReport,
    StageState,
)
from fedllm.types import Params

UNIFORM_TOLERANCE = 1e-9
"""How far a round's total weight may be from its number of updates (uniform weights)."""


class GaussianNoiseStage:
    """Add N(0, (z C / n)^2) to every entry of the mean of n clipped updates.

    Args:
        noise_multiplier: z >= 0 (0: nothing is added).
        clip: the clip norm C the clipping stage before this one applies (the same
            constant or estimator, so the noise follows an adaptive clip).
    """

    name = "noise"

    def __init__(self, noise_multiplier: float, clip: Parameter) -> None:
        if not noise_multiplier >= 0:
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        self.noise_multiplier, self.clip = noise_multiplier, clip

    def requires(self) -> Requirements:
        return Requirements(needs_clip_before=True, linear_aggregator_only=True)

    def initial_state(self) -> StageState:
        return {"clip": self.clip.initial()}

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        return update, {}

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        if self.noise_multiplier == 0 or report.num_accepted == 0:
            return combined
        if abs(report.total_weight - report.num_accepted) > UNIFORM_TOLERANCE:
            raise PipelineError(
                f"DP noise is calibrated for uniform weights (total weight "
                f"{report.total_weight} over {report.num_accepted} updates): set "
                "server.weighting = 'uniform'"
            )
        std = noise_std(self.noise_multiplier, state["clip"], report.num_accepted)
        generator = torch.Generator().manual_seed(report.seed)
        noised: Params = {}
        for key in sorted(combined):  # a fixed order: the same seed, the same noise
            value = combined[key]
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            noised[key] = (value.double() + std * noise).to(value.dtype)
        return noised

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        return {"clip": self.clip.next(state["clip"], report)}


def noise_std(noise_multiplier: float, clip: float, accepted: int) -> float:
    """The std of the noise :class:`GaussianNoiseStage` adds to a mean of ``accepted``."""
    return noise_multiplier * clip / accepted
