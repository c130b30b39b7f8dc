"""The engine interface: how client work is carried out (in process or remote)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from fedllm.types import ClientId, ClientUpdate, Params

ClientDone = Callable[[ClientUpdate], None]
"""Called as each client's update arrives (for progress display)."""


class Engine(Protocol):
    """Moves broadcasts to clients and their updates back."""

    def train(
        self,
        assignments: Sequence[tuple[ClientId, Params]],
        round_num: int,
        on_client_done: ClientDone | None = None,
        extra: Params | None = None,
    ) -> Iterator[ClientUpdate]:
        """Each client trains from its assigned start state; yields updates as they arrive.

        ``extra`` is sent to every client beside its start state (SCAFFOLD's
        server control variate).

        Updates have already passed through the client halves of the pipeline.
        Consumers fold each one in and drop it, so a round holds one update at a
        time, not one per client.
        """
        ...
