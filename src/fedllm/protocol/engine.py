"""The engine interface: how a phase's messages reach clients and their replies come back.

The embedded simulator (:mod:`fedllm.runtime.simulation`) calls clients in
process; a distributed engine carries the same messages over a network.
Nothing above this interface knows which one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from fedllm.message import Message, Reply
from fedllm.types import ClientId

ClientHandler = Callable[[ClientId, str, Message], Message]
"""A client's answer to one message: ``(client, phase, message) -> reply``."""

ReplyDone = Callable[[ClientId, Reply], None]
"""Called as each reply arrives (for progress display)."""


class Engine(Protocol):
    """Moves messages to clients and their replies back."""

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        """Send each client its message for ``phase``; yield each reply (or
        :class:`~fedllm.message.Dropped`) as it arrives, one per client.

        Consumers fold each reply in and drop it, so a phase holds one reply at a
        time, not one per client.
        """
        ...


@runtime_checkable
class TimedEngine(Protocol):
    """An engine that measures its transport (a distributed one)."""

    def take_times(self) -> dict[str, float]:
        """Seconds spent per phase since the last call (``transport/<phase>``), then reset."""
        ...


def transport_times(engine: Engine) -> dict[str, float]:
    """What ``engine`` measured since it was last asked; {} for an engine that doesn't."""
    return engine.take_times() if isinstance(engine, TimedEngine) else {}


def by_phase(handlers: Mapping[str, ClientHandler]) -> ClientHandler:
    """One client handler answering each phase with the handler named for it.

    Raises (when called):
        ValueError: a phase no handler is named for.
    """
    table = dict(handlers)

    def handle(client_id: ClientId, phase: str, message: Message) -> Message:
        if phase not in table:
            raise ValueError(f"no client handler for phase {phase!r}: known {sorted(table)}")
        return table[phase](client_id, phase, message)

    return handle
