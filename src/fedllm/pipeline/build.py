"""Build the aggregation pipeline from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import AGGREGATORS, load_builtin
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.noise import DistributedNoiseStage, GaussianNoiseStage
from fedllm.pipeline.quantile import QuantileClip
from fedllm.pipeline.stage import Aggregator, BatchAggregator, Constant, Parameter, Pipeline, Stage

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config
    from fedllm.privacy.plan import CentralPlan


def build_pipeline(config: Config, population: int | None = None) -> Pipeline:
    """Stages in client order (clip first, then central DP noise), around the configured
    aggregator.

    Args:
        config: the run config.
        population: the clients the server samples from, which a derived noise
            multiplier depends on; None on a node, whose client halves read the clip
            and noise from the broadcast.
    """
    load_builtin()
    stages: list[Stage] = []
    if config.privacy.dp == "central":
        stages.extend(central_dp_stages(config, population))
    elif config.pipeline.clip_norm is not None:
        stages.append(ClipStage(config.pipeline.clip_norm))
    aggregator: Aggregator | BatchAggregator = AGGREGATORS.get(config.server.aggregator)()
    return Pipeline(stages, aggregator)


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
        from fedllm.secure.params import noise_shares

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
