"""The one driver of every round protocol: phases in order, messages through the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fedllm.message import Message, Reply
from fedllm.protocol.engine import Engine, ReplyDone
from fedllm.protocol.tally import Tally
from fedllm.types import ClientId


class Phase(Protocol):
    """One exchange of a round: messages out, replies in, then what follows from them."""

    name: str

    def messages(self) -> Mapping[ClientId, Message]:
        """What each client is sent."""
        ...

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        """Take one reply (or a dropped client) as it arrives."""
        ...

    def finish(self) -> None:
        """Every reply is in."""
        ...


def run_phases(
    phases: Sequence[Phase], engine: Engine, tally: Tally, on_reply: ReplyDone | None = None
) -> None:
    """Run ``phases`` in order on ``engine``, counting every message in ``tally``."""
    for phase in phases:
        messages = phase.messages()
        tally.sent(messages)
        for client_id, reply in engine.exchange(phase.name, messages):
            tally.received(client_id, reply)
            if on_reply is not None:
                on_reply(client_id, reply)
            phase.receive(client_id, reply)
        phase.finish()
