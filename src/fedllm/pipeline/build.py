"""Build the aggregation pipeline from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import AGGREGATORS, load_builtin
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Aggregator, BatchAggregator, Pipeline, Stage

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config


def build_pipeline(config: Config) -> Pipeline:
    """Stages in client order (clip first), around the configured aggregator."""
    load_builtin()
    stages: list[Stage] = []
    if config.pipeline.clip_norm is not None:
        stages.append(ClipStage(config.pipeline.clip_norm))
    aggregator: Aggregator | BatchAggregator = AGGREGATORS.get(config.server.aggregator)()
    return Pipeline(stages, aggregator)
