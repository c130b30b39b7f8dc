"""Rules that need more than one round's updates, and the algorithm that feeds them.

A batch aggregator sees a round's updates and the broadcast, nothing else. FLTrust also
needs the server's own update on its root data, FoolsGold every client's updates of
earlier rounds and centered clipping its previous result (state that a resumed run must
get back), FLAME the round's seed for its noise, and update screening the round number
and who is malicious. Such a rule is a
:class:`RoundRule`; choosing it (``server.aggregator = "foolsgold"``, or
``[algorithm.screening]``) turns on a :class:`RoundRuleAlgorithm`, whose server plug-in
(:class:`~fedllm.security.defenses.round_plugin.RoundRulePlugin`) tells the rule each
round's number and seed, writes what it decided into the round's record under the
rule's name, checkpoints its state with the server's, and adds its summary to
``summary.json``. Used alone (a test, a notebook), a rule works without the plug-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:  # annotations only: a config load imports no torch
    from fedllm.composition import AnyAggregator
    from fedllm.config import Config
    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class RoundRule:
    """A batch aggregator with a round context, a record and (optionally) state.

    Attributes:
        name: the aggregator's name; also its plug-in's, its record entry's and its
            checkpoint group's.
        round: the round being aggregated (0 until told).
        seed: a seed derived for this round (0 until told).
        last: what it decided in this round, for the record (empty until it aggregates).
    """

    name = ""
    linear = False

    def __init__(self) -> None:
        self.round = 0
        self.seed = 0
        self.last: dict[str, Any] = {}

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        """The round's aggregate (see :class:`fedllm.pipeline.stage.BatchAggregator`)."""
        raise NotImplementedError

    def begin(self, round_num: int, seed: int) -> None:
        """A round starts: its number and its seed (derived from the run seed)."""
        self.round, self.seed, self.last = round_num, seed, {}

    def details(self) -> dict[str, Any]:
        """What it decided this round (empty: it did not aggregate)."""
        return self.last

    def state(self) -> tuple[Params, dict[str, Any]]:
        """Tensors and JSON to checkpoint (empty: none)."""
        return {}, {}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        """Continue from what :meth:`state` returned."""

    def summary(self) -> dict[str, Any]:
        """Its part of ``summary.json`` (empty: nothing)."""
        return {}


class RoundRuleAlgorithm:
    """The algorithm a :class:`RoundRule` brings: on when ``server.aggregator`` names the
    rule, built only on a federated run's server (the reference modes aggregate with the
    plain mean; a Flower node never aggregates). Its aggregator replaces the configured
    one with the rule it feeds.

    Subclasses set ``rule_name`` and :meth:`make`.
    """

    order = 85  # after the public server's warm-up, before screening (which wraps the rule)
    rule_name = ""

    def setting(self, config: Config) -> str | None:
        """``server.aggregator = '<rule>'`` when chosen, else None."""
        if config.server.aggregator != self.rule_name:
            return None
        return f"server.aggregator = {self.rule_name!r}"

    def make(self, setup: AlgorithmSetup) -> RoundRule:
        """The rule this run aggregates with."""
        raise NotImplementedError

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        if setup.mode != "federated" or setup.partial or self.setting(setup.ws.config) is None:
            return None
        return feeding(self.make(setup))


def feeding(rule: RoundRule, wrap: Callable[[AnyAggregator], None] | None = None) -> Algorithm:
    """The algorithm whose plug-in feeds ``rule`` and whose aggregator is ``rule``
    (``wrap``: given the configured aggregator first, for a rule around it: screening)."""
    from fedllm.security.defenses.round_plugin import RoundRulePlugin

    def replace(configured: AnyAggregator) -> AnyAggregator:
        if wrap is not None:
            wrap(configured)
        return rule

    return Algorithm(rule.name, server=RoundRulePlugin(rule), aggregator=replace)
