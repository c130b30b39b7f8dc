"""The server half of an update attack: bookkeeping only, so that a run says who
attacked.

Each round's record gets ``attacked`` (the malicious clients whose update was accepted
into the aggregate that round: none before ``attack.from_round``); ``summary.json`` gets
the attack, the malicious clients and the first round. It also tells the colluders'
channel (:mod:`.collusion`) which round it aggregates.
"""

from __future__ import annotations

from typing import Any

from fedllm.security.attacks.collusion import Colluders
from fedllm.security.attacks.update import NAME
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import ClientId

ATTACKED = "attacked"
"""The round record's key for the clients that attacked in it."""


class AttackRecord(ServerPlugin):
    """Records who attacked in each round, and the attack in the summary.

    Args:
        attack: the update attack's name.
        malicious: the malicious clients.
        from_round: the first round they attack.
        colluders: the colluders' channel to keep in step with the rounds, or None.
    """

    name = NAME

    def __init__(
        self,
        attack: str,
        malicious: frozenset[ClientId],
        from_round: int,
        colluders: Colluders | None = None,
    ) -> None:
        self.attack = attack
        self.malicious = malicious
        self.from_round = from_round
        self.colluders = colluders

    def begin_round(self, ctx: RoundContext) -> None:
        if self.colluders is not None:
            self.colluders.round = ctx.round

    def end_round(self, ctx: RoundContext) -> None:
        active = ctx.round >= self.from_round
        attacked = [c for c in ctx.record.accepted if c in self.malicious] if active else []
        ctx.record.extra[ATTACKED] = attacked

    def summary(self) -> dict[str, Any]:
        return {
            "update": self.attack,
            "malicious": sorted(self.malicious),
            "from_round": self.from_round,
        }
