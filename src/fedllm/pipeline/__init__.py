"""The aggregation pipeline (stages around an aggregator).

The names below import their module on first use (:mod:`fedllm.lazy`), so the
config's :mod:`fedllm.pipeline.settings` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.lazy import lazy_exports

if TYPE_CHECKING:
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
__getattr__ = lazy_exports(
    __name__, {name: "stage" for name in __all__} | {"build_pipeline": "build"}
)
