"""The embedded simulator: one base model in memory, clients are swapped-in state."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from fedllm.client.side import ClientSide
from fedllm.runtime.engine import ClientDone
from fedllm.types import ClientId, ClientUpdate, Params


class SimulationEngine:
    """Trains clients one after another on a single shared model.

    A client is its data plus whatever state it is handed; the model's
    trainable parameters are overwritten with each client's start state, so
    memory is O(base model + one client).

    Args:
        model: the model to train (trainable parameters are the exchanged state).
        side: what each client does in a round.
    """

    def __init__(self, model: torch.nn.Module, side: ClientSide) -> None:
        self.model = model
        self.side = side

    def train(
        self,
        assignments: Sequence[tuple[ClientId, Params]],
        round_num: int,
        on_client_done: ClientDone | None = None,
        extra: Params | None = None,
    ) -> Iterator[ClientUpdate]:
        """Run each assigned client's round in turn, yielding each update as it is done."""
        for client_id, start in assignments:
            update = self.side.run(self.model, client_id, start, extra or {}, round_num)
            if on_client_done is not None:
                on_client_done(update)
            yield update
