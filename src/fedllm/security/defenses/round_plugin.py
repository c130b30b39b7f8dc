"""The server plug-in that feeds a :class:`~fedllm.security.defenses.round_rule.RoundRule`
its round, records what it decided and checkpoints its state."""

from __future__ import annotations

from typing import Any

from fedllm.security.defenses.round_rule import RoundRule
from fedllm.seeding import derive_seed
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import Params


class RoundRulePlugin(ServerPlugin):
    """Tells ``rule`` each round's number and a seed of its own (derived from the
    round's), puts :meth:`RoundRule.details` into the round's record under the rule's
    name once the aggregate is made, and passes its state and summary through.

    Args:
        rule: the aggregator it feeds (the run's, once the algorithm replaced the
            configured one).
    """

    def __init__(self, rule: RoundRule) -> None:
        self.rule = rule
        self.name = rule.name

    def begin_round(self, ctx: RoundContext) -> None:
        self.rule.begin(ctx.round, derive_seed(ctx.seed, self.name))

    def process(self, ctx: RoundContext, aggregate: Params) -> Params:
        self.record(ctx)  # now: a later plug-in's end_round may read it (update forensics)
        return aggregate

    def end_round(self, ctx: RoundContext) -> None:
        self.record(ctx)  # a round whose aggregate was not applied (not finite)

    def record(self, ctx: RoundContext) -> None:
        """The rule's decisions of this round into the record, under its name."""
        details = self.rule.details()
        if details:
            ctx.record.extra[self.name] = details

    def state(self) -> tuple[Params, dict[str, Any]]:
        return self.rule.state()

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        self.rule.restore(tensors, meta)

    def summary(self) -> dict[str, Any]:
        return self.rule.summary()
