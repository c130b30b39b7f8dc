"""Per-entry weighted mean over the updates that hold each entry (partial updates)."""

from __future__ import annotations

import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.types import Params


class CoverageMean(WeightedMean):
    """``sum_k w_k m_k u_k / sum_k w_k m_k``, entry by entry, one update at a time.

    ``m_k`` is update ``k``'s coverage: a 0/1 mask per tensor, broadcastable
    to it, of the entries the client trained (all of them for :meth:`add` and
    for tensors the coverage leaves out). Entries no update covers come out 0
    (no change). With full coverage everywhere this is
    :class:`~fedllm.aggregate.mean.WeightedMean`. Heterogeneous LoRA ranks use
    it to average each rank component over the clients that train it.

    It is linear in the updates (the weights and masks are known), so a secure
    sum could compute it from the masked sums and the per-entry weight totals.
    """

    name = "coverage_mean"
    linear = True

    def __init__(self) -> None:
        super().__init__()
        self._weight: Params = {}

    def start(self, template: Params) -> None:
        """Zero (or allocate) the sums and the per-entry weights for ``template``'s shapes."""
        super().start(template)
        self._weight = {k: torch.zeros((), dtype=buf.dtype) for k, buf in self._acc.items()}

    def add(self, update: Params, weight: float) -> None:
        """Fold in an update that holds every entry."""
        self.add_covered(update, weight, {})

    def add_covered(self, update: Params, weight: float, coverage: Params) -> None:
        """Fold in an update that holds only the entries where its mask is 1.

        Args:
            update: the update, in the template's shapes.
            weight: its aggregation weight, ``>= 0``.
            coverage: 0/1 masks by tensor name, each broadcastable to its
                tensor; a tensor without a mask is covered entirely.
        """
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        self._check_open()
        with torch.no_grad():
            for name in self._weight:
                mask = coverage.get(name)
                covered = weight if mask is None else weight * mask.to(self._weight[name].dtype)
                self._weight[name] = self._weight[name] + covered
        self._sums.add(update, weight, coverage)
        self._total += weight

    def _finish(self) -> Params:
        """The sums divided in place by each entry's weight (1 where none covered it)."""
        out: Params = {}
        with torch.no_grad():
            for name, buf in self._acc.items():
                weight = self._weight[name]
                safe = torch.where(weight > 0, weight, torch.ones_like(weight))
                out[name] = buf.div_(safe).to(self._dtypes[name])
        return out
