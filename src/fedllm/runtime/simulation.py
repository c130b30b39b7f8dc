"""The embedded simulator: one base model in memory, clients are swapped-in state."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from fedllm.message import Dropped, Message, Reply
from fedllm.protocol.engine import ClientHandler, Engine
from fedllm.runtime.dropout import DropoutPlan
from fedllm.types import ClientId

EngineFactory = Callable[[ClientHandler, DropoutPlan | None], Engine]
"""How a mode gets its engine: from the in-process client side and the simulated
dropouts. :class:`SimulationEngine` is the default; a distributed runtime passes a
factory that ignores both (its clients, and their dropouts, are real)."""


class SimulationEngine:
    """Calls clients one after another, in process, on a single shared model.

    A client is its data plus whatever state its message brings; the handler
    overwrites the model's trainable parameters with each client's start
    state, so memory is O(base model + one client). Messages are not encoded:
    the driver counts their bytes from their exact encoded size.

    Args:
        handler: answers a client's message (the client side).
        dropouts: which clients drop in which round and phase (seeded); None: none.
    """

    def __init__(self, handler: ClientHandler, dropouts: DropoutPlan | None = None) -> None:
        self.handler = handler
        self.dropouts = dropouts

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        """Each client's reply in turn, or :class:`Dropped` where the plan says so."""
        for client_id, message in messages.items():
            reason = self.dropouts.drops(client_id, message.round, phase) if self.dropouts else None
            if reason is not None:
                yield client_id, Dropped(reason)
                continue
            yield client_id, self.handler(client_id, phase, message)
