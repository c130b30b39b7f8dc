"""The aggregation pipeline (stages around an aggregator)."""

from fedllm.pipeline.build import build_pipeline
from fedllm.pipeline.stage import (
    Aggregator,
    Pipeline,
    PipelineError,
    Requirements,
    RoundReport,
    Stage,
    StageState,
)

__all__ = [
    "Aggregator",
    "Pipeline",
    "PipelineError",
    "Requirements",
    "RoundReport",
    "Stage",
    "StageState",
    "build_pipeline",
]
