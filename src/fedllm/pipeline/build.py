"""Build the aggregation pipeline from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedllm.components import AGGREGATORS, active_algorithms
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Aggregator, BatchAggregator, Pipeline, Stage

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config


def build_pipeline(config: Config, population: int | None = None) -> Pipeline:
    """Stages in client order around the configured aggregator: those of the one
    algorithm that brings its own (central DP's clip and noise), else the plain clip of
    ``pipeline.clip_norm`` if set.

    Args:
        config: the run config.
        population: the clients the server samples from, which a derived noise
            multiplier depends on; None on a node, whose client halves read the clip
            and noise from the broadcast.
    """
    stages: list[Stage] = _algorithm_stages(config, population)
    if not stages and config.pipeline.clip_norm is not None:
        stages.append(ClipStage(config.pipeline.clip_norm))
    return Pipeline(stages, build_aggregator(config))


def build_aggregator(config: Config) -> Aggregator | BatchAggregator:
    """The aggregator ``server.aggregator`` names, given its ``[aggregator.<name>]``
    section when its factory declares ``settings`` (none otherwise, as ``mean``)."""
    name = config.server.aggregator
    factory = AGGREGATORS.get(name)
    if getattr(factory, "settings", None) is None:
        built: Aggregator | BatchAggregator = factory()
    else:
        built = factory(config.aggregator_settings_of(name))
    return built


def _algorithm_stages(config: Config, population: int | None) -> list[Stage]:
    """The stages of the one active algorithm that declares ``stages(config, population)``."""
    bringing: list[tuple[str, Any]] = [
        (name, factory)
        for name, factory in active_algorithms(config)
        if getattr(factory, "stages", None) is not None
    ]
    if len(bringing) > 1:
        names = ", ".join(name for name, _ in bringing)
        raise ValueError(f"only one algorithm may bring aggregation stages, not {names}")
    return list(bringing[0][1].stages(config, population)) if bringing else []
