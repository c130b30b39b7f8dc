"""Central DP's aggregation stages: DP-FedAvg's clip and noise around the aggregator,
and the plan the accountant charges."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Constant, Parameter, Stage
from fedllm.privacy.central_dp.noise import DistributedNoiseStage, GaussianNoiseStage
from fedllm.privacy.central_dp.quantile import QuantileClip

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config
    from fedllm.privacy.plan import CentralPlan


def central_dp_stages(config: Config, population: int | None) -> list[Stage]:
    """DP-FedAvg's clip and noise, sharing one clip parameter (adaptive or constant)."""
    privacy = config.privacy
    assert privacy.clip_norm is not None  # the section's validator ensures it
    plan = central_plan(config, population) if population is not None else None
    expected = float(config.server.clients_per_round)
    if population is not None:
        expected = float(min(expected, population))
    poisson = config.server.sampling == "poisson"
    clip: Parameter = Constant(privacy.clip_norm)
    if privacy.adaptive_clip:
        count_noise = plan.count_noise if plan is not None else 0.0
        clip = QuantileClip(
            privacy.clip_norm,
            privacy.clip_quantile,
            privacy.clip_lr,
            count_noise,
            expected if poisson else None,
            config.secure_randomness,
        )
    update_noise = plan.update_noise if plan is not None else privacy.noise_multiplier or 0.0
    if config.secagg.enabled:  # the clients add the noise before masking (distributed DP)
        from fedllm.secure.secagg.params import noise_shares

        server, colluders = config.server, config.secagg.tolerated_colluders
        shares = noise_shares(server.min_clients, colluders)  # survives the colluders
        return [ClipStage(clip), DistributedNoiseStage(update_noise, clip, shares)]
    return [
        ClipStage(clip),
        GaussianNoiseStage(
            update_noise, clip, expected if poisson else None, config.secure_randomness
        ),
    ]


def central_plan(config: Config, population: int) -> CentralPlan:
    """The DP plan of a ``privacy.dp = 'central'`` run sampling from ``population``."""
    from fedllm.privacy.plan import accounted_sampling, plan_central

    server = config.server
    return plan_central(
        config.privacy,
        population,
        server.clients_per_round,
        accounted_sampling(server.sampling),
        server.rounds,
    )
