"""Central Gaussian noise on the aggregate of clipped updates (the DP-FedAvg mechanism).

With every update clipped to norm C and uniform weights, one client moves the sum
of the n accepted updates by at most C; Gaussian noise of std ``z x C`` on that sum
makes the round a Gaussian mechanism of noise multiplier z, which
:mod:`fedllm.privacy.accountant` accounts. The aggregate here is the mean, so the
noise added to it has std ``z x C / n``.

Under Poisson sampling the cohort's size is itself random and would reveal who
took part; the noisy sum is then divided by the expected cohort instead (the
fixed-denominator estimator of McMahan et al. 2018), so the output is
``(sum + N(0, (z C)^2)) / expected``.
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
from fedllm.seeding import privacy_seed
from fedllm.types import Params

UNIFORM_TOLERANCE = 1e-9
"""How far a round's total weight may be from its number of updates (uniform weights)."""


class GaussianNoiseStage:
    """Add N(0, (z C / n)^2) to every entry of the mean of n clipped updates.

    Args:
        noise_multiplier: z >= 0 (0: nothing is added); kept in the stage's state
            (``multiplier``), so a resumed run keeps the one it started with.
        clip: the clip norm C the clipping stage before this one applies (the same
            constant or estimator, so the noise follows an adaptive clip).
        expected: the expected cohort under Poisson sampling (the noisy sum is divided
            by it); None: fixed-size cohorts, the mean of the accepted updates.
        secure: draw the noise from a generator seeded by the OS CSPRNG each round
            (``run.randomness = 'secure'``); False: from the round's derived seed, which
            anyone who knows the config can recompute.
    """

    name = "noise"

    def __init__(
        self,
        noise_multiplier: float,
        clip: Parameter,
        expected: float | None = None,
        secure: bool = False,
    ) -> None:
        if not noise_multiplier >= 0:
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        if expected is not None and not expected > 0:
            raise ValueError(f"expected cohort must be > 0, got {expected}")
        self.noise_multiplier, self.clip, self.expected = noise_multiplier, clip, expected
        self.secure = secure

    def requires(self) -> Requirements:
        return Requirements(needs_clip_before=True, linear_aggregator_only=True)

    def initial_state(self) -> StageState:
        return {"clip": self.clip.initial(), "multiplier": self.noise_multiplier}

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        return update, {}

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        accepted, multiplier = report.num_accepted, state["multiplier"]
        if accepted == 0 or (multiplier == 0 and self.expected is None):
            return combined
        if abs(report.total_weight - accepted) > UNIFORM_TOLERANCE:
            raise PipelineError(
                f"DP noise is calibrated for uniform weights (total weight "
                f"{report.total_weight} over {accepted} updates): set "
                "server.weighting = 'uniform'"
            )
        divisor = accepted if self.expected is None else self.expected
        scale = accepted / divisor  # the mean -> the sum / divisor
        std = noise_std(multiplier, state["clip"], divisor)
        generator = torch.Generator().manual_seed(privacy_seed(report.seed, secure=self.secure))
        noised: Params = {}
        for key in sorted(combined):  # a fixed order: the same seed, the same noise
            value = combined[key]
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            noised[key] = (value.double() * scale + std * noise).to(value.dtype)
        return noised

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        return {"clip": self.clip.next(state["clip"], report), "multiplier": state["multiplier"]}


def noise_std(noise_multiplier: float, clip: float, divisor: float) -> float:
    """The std of the noise :class:`GaussianNoiseStage` adds to a sum divided by
    ``divisor`` (the accepted updates, or the expected cohort)."""
    return noise_multiplier * clip / divisor


class DistributedNoiseStage(GaussianNoiseStage):
    """Distributed DP under secure aggregation: each client adds its share of the noise
    before masking, so the server never sees an update or a sum without noise.

    Each of n surviving clients adds N(0, (z C)^2 / m) per entry, m = ``shares`` (the
    fewest inputs a revealed sum may have, ``max(2, server.min_clients)``, less the
    colluding clients tolerated, ``secagg.tolerated_colluders``: see
    :func:`fedllm.secure.secagg.params.noise_shares`). Their sum carries noise of std
    ``z C sqrt(n / m) >= z C`` whenever n >= m, and still at least z C once c <= n_min - m
    colluders subtract their own shares: so the accountant's epsilon for multiplier z
    holds against them (rounds with too few survivors are never applied). The price is
    a std ``sqrt(n / m)`` times the central one. The protocol draws the noise
    (:meth:`client_std` gives its scale), from a CSPRNG on a distributed engine or under
    ``run.randomness = 'secure'``; this stage's halves pass updates through.

    Args:
        noise_multiplier: z >= 0.
        clip: the clip norm C of the clipping stage before it.
        shares: m >= 1.
    """

    def __init__(self, noise_multiplier: float, clip: Parameter, shares: int) -> None:
        super().__init__(noise_multiplier, clip)
        if shares < 1:
            raise ValueError(f"noise shares must be >= 1, got {shares}")
        self.shares = shares

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        return combined  # the clients' noise is already in the sum

    def client_std(self, state: StageState) -> float:
        """The std of the noise one client adds to each entry: ``z C / sqrt(m)``."""
        return float(state["multiplier"] * state["clip"] / self.shares**0.5)
