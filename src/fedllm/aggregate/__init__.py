"""Aggregators: how accepted client updates are combined."""

from fedllm.aggregate.coverage import CoverageMean
from fedllm.aggregate.mean import WeightedMean

__all__ = ["CoverageMean", "WeightedMean"]
