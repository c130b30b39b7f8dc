"""Build the aggregation pipeline from the config."""

from __future__ import annotations

from fedllm.components import AGGREGATORS, load_builtin
from fedllm.config import Config
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Aggregator, BatchAggregator, Pipeline, Stage


def build_pipeline(config: Config) -> Pipeline:
    """Stages in client order (clip first), around the configured aggregator."""
    load_builtin()
    stages: list[Stage] = []
    if config.pipeline.clip_norm is not None:
        stages.append(ClipStage(config.pipeline.clip_norm))
    aggregator: Aggregator | BatchAggregator = AGGREGATORS.get(config.server.aggregator)()
    return Pipeline(stages, aggregator)
