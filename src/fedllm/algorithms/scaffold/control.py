"""SCAFFOLD's server control variate ``c`` (the mean of every client's ``c_i``)."""

from __future__ import annotations

import torch

from fedllm.aggregate.mean import Accumulator
from fedllm.types import Params


class ServerControl:
    """Holds ``c``, broadcast with the model, and folds in the clients' changes.

    ``c += (1/N) sum_{i in S} (c_i+ - c_i)`` over the accepted clients ``S`` of
    a round, ``N`` being every client of the federation (Karimireddy et al.
    2020, Algorithm 1, line 17). It is applied even when the round leaves the
    model unchanged: those clients have already moved their ``c_i``.

    Args:
        template: the exchanged state (names, shapes, dtypes of ``c``).
        num_clients: ``N``, the federation's size.
    """

    def __init__(self, template: Params, num_clients: int) -> None:
        if num_clients < 1:
            raise ValueError(f"SCAFFOLD needs at least one client, got {num_clients}")
        self.control: Params = {k: torch.zeros_like(v) for k, v in template.items()}
        self.num_clients = num_clients
        self._sum = Accumulator()

    def start(self) -> None:
        """Begin a round: nothing folded in yet."""
        self._sum.start(self.control)

    def add(self, change: Params) -> None:
        """Fold in one accepted client's ``c_i+ - c_i``."""
        self._sum.add(change)

    def finish(self) -> None:
        """Move ``c`` by the round's changes over ``N``."""
        with torch.no_grad():
            for name, acc in self._sum.sums.items():
                self.control[name].add_((acc / self.num_clients).to(self.control[name].dtype))
