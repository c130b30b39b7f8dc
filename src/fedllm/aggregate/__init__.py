"""Aggregators: how accepted client updates are combined."""

from fedllm.aggregate.mean import WeightedMean

__all__ = ["WeightedMean"]
