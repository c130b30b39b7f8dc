"""Update attacks in a run (``attack.update = "<name>"``): the registered algorithm that
makes the malicious clients poison what they send.

- An attack on a client's own update (sign flip, scaling, noise, free riding) is a
  client plug-in (:mod:`.own_update`): it acts where a real malicious client would, before
  masking, so it runs under SecAgg+ and CKKS too.
- A colluding attack (ALIE, IPM, min-max, min-sum) is the colluders' channel around the
  aggregator (:mod:`.collusion`); it needs each update in the clear, so SecAgg+ and CKKS
  are refused at load, and heterogeneous ranks (whose partial updates a batch cannot
  take), and update forensics (``server.keep_updates``, which keeps each update as it
  arrives, before the channel).

The malicious clients are the same in every round
(:func:`~fedllm.security.attacks.targets.malicious_clients` over the whole federation);
one that is not sampled does nothing that round. A server half records who attacked
(:mod:`.record`). The simulator only: a Flower node holds only its own client and could
not draw ``attack.fraction`` of the federation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.security.attacks.settings import NO_ATTACK

if TYPE_CHECKING:
    from fedllm.composition import AnyAggregator
    from fedllm.config import Config


@ALGORITHMS.register("update_attack")
class UpdateAttacking:
    """The malicious clients' model poisoning, by ``attack.update``."""

    # last: a malicious client's plug-in has the last word on its update, and the
    # colluders' channel wraps every other aggregator (screening, round rules), so all
    # the server does sees the crafted updates
    order = 99
    modes = ("federated",)
    modes_why = "malicious clients poison what they send to a federation's server"

    def setting(self, config: Config) -> str | None:
        name = config.attack.update
        return f"attack.update = {name!r}" if name != NO_ATTACK else None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        from fedllm.security.attacks.update import is_colluding

        if not is_colluding(config.attack.update):
            return []
        why = "the colluding attack is played where each update is seen in the clear"
        return [
            ("secagg", f"{why}, which masking hides"),
            ("he", f"{why}, which encryption hides"),
            ("hetero_rank", "its updates cover part of the state, which a batch cannot take"),
            (
                "keep_updates",
                "it keeps each update as it arrives, before the colluders' channel replaces "
                "theirs at the aggregator: it would keep their honest updates as malicious",
            ),
        ]

    def problem(self, config: Config) -> str | None:
        if config.runtime.engine != "simulation":
            return (
                f"attack.update = {config.attack.update!r} is simulated: it needs "
                "runtime.engine = 'simulation' (a Flower node holds only its own client)"
            )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.attacks.collusion import Colluders, Collusion
        from fedllm.security.attacks.own_update import OwnUpdatePlugin
        from fedllm.security.attacks.record import AttackRecord
        from fedllm.security.attacks.targets import malicious_clients
        from fedllm.security.attacks.update import NAME, build_attack

        config = setup.ws.config
        name = config.attack.update
        if name == NO_ATTACK or setup.mode != "federated" or setup.partial:
            return None
        attack = build_attack(config)
        malicious = frozenset(malicious_clients(config.attack, setup.clients, config.seed))
        first = config.attack.from_round
        if not attack.colluding:
            cohort = min(config.server.clients_per_round, len(setup.clients))
            client = OwnUpdatePlugin(attack, malicious, first, cohort, config.server.lr)
            return Algorithm(NAME, client=client, server=AttackRecord(name, malicious, first))
        colluders = Colluders(attack, malicious, first)

        def wrap(inner: AnyAggregator) -> AnyAggregator:
            return Collusion(inner, colluders)

        server = AttackRecord(name, malicious, first, colluders)
        return Algorithm(NAME, server=server, aggregator=wrap)
