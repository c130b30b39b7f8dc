"""Streaming weighted mean: one preallocated fp32 accumulator per tensor, reused."""

from __future__ import annotations

import torch

from fedllm.components import AGGREGATORS
from fedllm.types import Params


@AGGREGATORS.register("mean")
class WeightedMean:
    """sum_k w_k u_k / sum_k w_k, folded in one update at a time.

    Accumulates in float32 (float64 for float64 inputs) and returns tensors in
    the updates' own dtype. Buffers are kept between rounds: first touch of
    fresh memory is several times slower than reuse on these machines.
    """

    name = "mean"
    linear = True

    def __init__(self) -> None:
        self._acc: Params = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._total = 0.0

    def start(self, template: Params) -> None:
        """Zero (or allocate) the accumulators for ``template``'s shapes."""
        if set(self._acc) != set(template) or any(
            self._acc[k].shape != t.shape for k, t in template.items()
        ):
            self._acc = {
                k: torch.zeros(t.shape, dtype=accumulator_dtype(t.dtype))
                for k, t in template.items()
            }
        else:
            for buf in self._acc.values():
                buf.zero_()
        self._dtypes = {k: t.dtype for k, t in template.items()}
        self._total = 0.0

    def add(self, update: Params, weight: float) -> None:
        """Add ``weight * update`` to the running sum."""
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        with torch.no_grad():
            for name, buf in self._acc.items():
                buf.add_(update[name].to(buf.dtype), alpha=weight)
        self._total += weight

    def result(self) -> Params:
        """The weighted mean; raises if every weight was zero."""
        if self._total <= 0:
            raise ValueError("weighted mean of updates whose weights sum to 0")
        scale = 1.0 / self._total
        return {k: (buf * scale).to(self._dtypes[k]) for k, buf in self._acc.items()}


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 sums for float64 tensors, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
