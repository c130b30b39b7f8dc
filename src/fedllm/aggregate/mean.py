"""Streaming weighted mean: one preallocated fp32 accumulator per tensor, reused."""

from __future__ import annotations

import torch

from fedllm.components import AGGREGATORS
from fedllm.types import Params

HOLD_BYTES = 256 * 2**20
"""Most bytes of updates an :class:`Accumulator` holds before folding them in (256 MiB).
Folding several together keeps each block of the sums in cache while every update's
block is read from memory (``benchmarks/aggregate.py``); an update larger than this is
folded in as it arrives."""

BLOCK = 2**20
"""Entries of the sums folded at a time (4 MiB of fp32: well inside the L3 cache here; a
quarter of that is slower, the per-block calls start to count)."""


class Accumulator:
    """Running sums of named tensors in a preallocated buffer per tensor, reused across
    rounds (first touch of fresh memory is several times slower than reuse here).

    Sums in float32 (float64 for float64 inputs): :func:`accumulator_dtype`. Updates
    are held, not copied, until :data:`HOLD_BYTES` of them wait, then folded in together
    one block of rows at a time; each entry still receives its terms in arrival order,
    so the sums are bit for bit those of folding every update as it came. An update must
    not change after it is added.

    Args:
        hold_bytes: most bytes of updates held before they are folded in; 0 folds each
            one as it arrives.
    """

    def __init__(self, hold_bytes: int = HOLD_BYTES) -> None:
        self.hold_bytes = hold_bytes
        self._sums: Params = {}
        self._held: list[tuple[Params, float, Params]] = []
        self._held_bytes = 0

    @property
    def sums(self) -> Params:
        """The sums of everything added so far."""
        self.flush()
        return self._sums

    def start(self, template: Params) -> None:
        """Zero (or allocate) the sums for ``template``'s names and shapes."""
        self._held, self._held_bytes = [], 0
        if set(self._sums) != set(template) or any(
            self._sums[k].shape != t.shape or self._sums[k].dtype != accumulator_dtype(t.dtype)
            for k, t in template.items()
        ):
            self._sums = {
                k: torch.zeros(t.shape, dtype=accumulator_dtype(t.dtype))
                for k, t in template.items()
            }
        else:
            for buf in self._sums.values():
                buf.zero_()

    def add(self, update: Params, alpha: float = 1.0, coverage: Params | None = None) -> None:
        """``sums += alpha * update`` (times ``coverage[name]``, a 0/1 mask broadcastable to
        the tensor, where given), tensor by tensor: now or at the next flush."""
        size = sum(update[name].numel() * update[name].element_size() for name in self._sums)
        if self._held and self._held_bytes + size > self.hold_bytes:
            self.flush()
        self._held.append((update, alpha, coverage or {}))
        self._held_bytes += size
        if self._held_bytes > self.hold_bytes:
            self.flush()

    def flush(self) -> None:
        """Fold every held update into the sums."""
        if not self._held:
            return
        with torch.no_grad():
            for name, buf in self._sums.items():
                terms = [(u[name], alpha, cover.get(name)) for u, alpha, cover in self._held]
                fold(buf, terms)
        self._held, self._held_bytes = [], 0


Term = tuple[torch.Tensor, float, "torch.Tensor | None"]
"""A tensor, its factor and its 0/1 mask (None: all of it)."""


def fold(buf: torch.Tensor, terms: list[Term]) -> None:
    """``buf += sum_k alpha_k * mask_k * tensor_k``, the terms in order, a block of rows
    (about :data:`BLOCK` entries) at a time, so the block of ``buf`` stays in cache while
    each term's block is read. A 0-d tensor is one row of one entry."""
    rows = buf.view(-1) if buf.dim() == 0 else buf
    step = max(1, BLOCK // max(rows[0].numel(), 1))
    for first in range(0, rows.shape[0], step):
        block = rows[first : first + step]
        for tensor, alpha, mask in terms:
            part = tensor.reshape(rows.shape)[first : first + step].to(buf.dtype)
            if mask is None:
                block.add_(part, alpha=alpha)
            else:
                block.addcmul_(part, _mask_rows(mask, rows, first, step), value=alpha)


def _mask_rows(mask: torch.Tensor, rows: torch.Tensor, first: int, step: int) -> torch.Tensor:
    """The part of ``mask`` (broadcastable to ``rows``) that covers rows ``first`` ..
    ``first + step``: a slice where the mask runs along the rows, else all of it."""
    if mask.dim() == rows.dim() and mask.shape[0] == rows.shape[0]:
        mask = mask[first : first + step]
    return mask.to(rows.dtype)


@AGGREGATORS.register("mean")
class WeightedMean:
    """sum_k w_k u_k / sum_k w_k, folded in one update at a time.

    Accumulates in float32 (float64 for float64 inputs) and returns tensors in
    the updates' own dtype. Buffers are kept between rounds: first touch of
    fresh memory is several times slower than reuse on these machines. The
    result is the sums scaled in place (for fp32/fp64 updates: no new tensor, no
    second model-sized buffer), valid until the next :meth:`start`; nothing can be
    added after it.
    """

    name = "mean"
    linear = True

    def __init__(self) -> None:
        self._sums = Accumulator()
        self._dtypes: dict[str, torch.dtype] = {}
        self._total = 0.0
        self._result: Params | None = None

    @property
    def _acc(self) -> Params:
        return self._sums.sums

    def start(self, template: Params) -> None:
        """Zero (or allocate) the accumulators for ``template``'s shapes."""
        self._sums.start(template)
        self._dtypes = {k: t.dtype for k, t in template.items()}
        self._total = 0.0
        self._result = None

    def add(self, update: Params, weight: float) -> None:
        """Add ``weight * update`` to the running sum."""
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        self._check_open()
        self._sums.add(update, weight)
        self._total += weight

    def result(self) -> Params:
        """The weighted mean (the same tensors when asked again before the next
        :meth:`start`); raises if every weight was zero."""
        if self._result is None:
            if self._total <= 0:
                raise ValueError("weighted mean of updates whose weights sum to 0")
            self._result = self._finish()
        return self._result

    def _finish(self) -> Params:
        """The sums turned into the mean in place, in the updates' dtypes."""
        scale = 1.0 / self._total
        with torch.no_grad():
            return {k: buf.mul_(scale).to(self._dtypes[k]) for k, buf in self._acc.items()}

    def _check_open(self) -> None:
        if self._result is not None:
            raise RuntimeError("an update was added after result(); call start() first")


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 sums for float64 tensors, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
