"""The colluders' channel, played in the simulator around the configured aggregator.

Colluding attacks (ALIE, IPM, min-max, min-sum) need the malicious clients' honest
updates together. Real colluders share them out of band before sending; the simulator
lets every malicious client train honestly, then, where the round's accepted updates
meet the aggregator, crafts one vector from the malicious clients' updates alone
(partial knowledge: no benign update enters it, only how many updates the round has),
puts it in place of each of them, and hands the round to the configured aggregator.

The wrapper sees every update of the round, as the aggregator does; what the colluders
send is a function of their own updates and the count only
(``tests/unit/test_update_attacks.py`` changes a benign update and checks). It makes the
round a batch: a streaming aggregator (the weighted mean) gets the updates after the
crafting, one at a time. The crafted updates arrive after the clients' pipeline halves
(a ``pipeline.clip_norm`` clip), as a real attacker's unclipped update would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fedllm.pipeline.stage import BatchAggregator, BatchResult, WeightedUpdate
from fedllm.security.attacks.update import CollusionAttack
from fedllm.types import ClientId, Params

if TYPE_CHECKING:
    from fedllm.composition import AnyAggregator


@dataclass
class Colluders:
    """Who colludes, from when, with what; and the round being aggregated.

    Attributes:
        attack: the colluding attack.
        malicious: the malicious clients (the same in every round).
        from_round: the first round they attack.
        round: the round now aggregated (the attack's server half sets it when a round
            begins; 0: none yet).
    """

    attack: CollusionAttack
    malicious: frozenset[ClientId]
    from_round: int
    round: int = 0

    def poison(self, updates: Sequence[WeightedUpdate], reference: Params) -> list[WeightedUpdate]:
        """The round's updates with each malicious one replaced by the crafted update
        (the same for all of them; their weights kept); unchanged before ``from_round``
        or without a malicious update."""
        from fedllm.security.defenses.flat import stack, unstack

        own = [u for u in updates if u.client_id in self.malicious]
        if self.round < self.from_round or not own:
            return list(updates)
        crafted = unstack(self.attack.craft(stack(own, reference), len(updates)), reference)
        return [
            replace(u, delta=dict(crafted)) if u.client_id in self.malicious else u for u in updates
        ]


class Collusion:
    """An aggregator that lets the colluders craft their updates, then aggregates with
    ``inner``.

    Attributes:
        name: the inner aggregator's (errors and records name the rule that runs).
        linear: the inner aggregator's (the server's rule is the inner one; the channel
            is the colluders', outside the server).
    """

    def __init__(self, inner: AnyAggregator, colluders: Colluders) -> None:
        self.inner = inner
        self.colluders = colluders
        self.name = inner.name
        self.linear = inner.linear

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        poisoned = self.colluders.poison(updates, reference)
        if isinstance(self.inner, BatchAggregator):
            return self.inner.aggregate(poisoned, reference)
        self.inner.start(reference)
        for update in poisoned:
            self.inner.add(update.delta, update.weight)
        return BatchResult(self.inner.result())
