"""Streaming weighted mean: one preallocated fp32 accumulator per tensor, reused."""

from __future__ import annotations

import torch

from fedllm.components import AGGREGATORS
from fedllm.types import Params


class Accumulator:
    """Running sums of named tensors in a preallocated buffer per tensor, reused across
    rounds (first touch of fresh memory is several times slower than reuse here).

    Sums in float32 (float64 for float64 inputs): :func:`accumulator_dtype`.
    """

    def __init__(self) -> None:
        self.sums: Params = {}

    def start(self, template: Params) -> None:
        """Zero (or allocate) the sums for ``template``'s names and shapes."""
        if set(self.sums) != set(template) or any(
            self.sums[k].shape != t.shape or self.sums[k].dtype != accumulator_dtype(t.dtype)
            for k, t in template.items()
        ):
            self.sums = {
                k: torch.zeros(t.shape, dtype=accumulator_dtype(t.dtype))
                for k, t in template.items()
            }
        else:
            for buf in self.sums.values():
                buf.zero_()

    def add(self, update: Params, alpha: float = 1.0) -> None:
        """``sums += alpha * update``, tensor by tensor."""
        with torch.no_grad():
            for name, buf in self.sums.items():
                buf.add_(update[name].to(buf.dtype), alpha=alpha)


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
        self._sums = Accumulator()
        self._dtypes: dict[str, torch.dtype] = {}
        self._total = 0.0

    @property
    def _acc(self) -> Params:
        return self._sums.sums

    def start(self, template: Params) -> None:
        """Zero (or allocate) the accumulators for ``template``'s shapes."""
        self._sums.start(template)
        self._dtypes = {k: t.dtype for k, t in template.items()}
        self._total = 0.0

    def add(self, update: Params, weight: float) -> None:
        """Add ``weight * update`` to the running sum."""
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        self._sums.add(update, weight)
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
