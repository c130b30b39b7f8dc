"""The client half of an update attack on a client's own update: what a malicious
client's software does after training, before its pipeline halves (clip, masks).

Honest clients are untouched. A malicious client, from ``attack.from_round`` on, sends
what the attack crafts from its trained update and the broadcasts it saw
(:class:`~fedllm.security.attacks.update.Sight`); before that round, its trained update.
"""

from __future__ import annotations

from dataclasses import replace

from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.security.attacks.update import NAME, OwnUpdateAttack, Sight
from fedllm.types import ClientId, ClientUpdate, Params


class OwnUpdatePlugin(ClientPlugin):
    """Replaces the update of each malicious client with ``attack``'s.

    Args:
        attack: the attack on the client's own update.
        malicious: the malicious clients (the same in every round).
        from_round: the first round in which they attack.
        cohort: the clients sampled per round (what the recipe says).
        server_lr: the server learning rate (what the recipe says).
    """

    name = NAME

    def __init__(
        self,
        attack: OwnUpdateAttack,
        malicious: frozenset[ClientId],
        from_round: int,
        cohort: int,
        server_lr: float,
    ) -> None:
        self.attack = attack
        self.malicious = malicious
        self.from_round = from_round
        self.cohort = cohort
        self.server_lr = server_lr
        self.keeps_state = attack.remembers_broadcast
        self._seen: dict[ClientId, tuple[Params, Params | None]] = {}

    def start(self, ctx: ClientContext, state: Params) -> Params:
        """A malicious client that remembers broadcasts keeps this one (and reads the
        one before)."""
        if self.keeps_state and ctx.client_id in self.malicious:
            now = {name: tensor.detach().clone() for name, tensor in state.items()}
            self._seen[ctx.client_id] = (now, ctx.load())
            ctx.save(now)
        return state

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        seen = self._seen.pop(ctx.client_id, None)
        if ctx.client_id not in self.malicious or ctx.round < self.from_round:
            return update
        broadcast, previous = seen if seen is not None else ({}, None)
        sight = Sight(
            ctx.client_id,
            ctx.round,
            ctx.seed,
            broadcast,
            previous,
            self.cohort,
            self.server_lr,
        )
        return replace(update, delta=self.attack.craft(update.delta, sight))
