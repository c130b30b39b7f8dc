"""An attacker's own training budget (``attack.local_steps``, ``attack.lr``): the
malicious clients train as long and as fast as they like, from ``attack.from_round`` on.

A real malicious client runs its own software: nothing makes it train with the
recipe's steps or learning rate. Bagdasaryan et al. 2020 ("How To Backdoor Federated
Learning", section 4) give their backdoor clients more local epochs and their own
learning rate so that the backdoor is learned before the update is sent (and boosted,
``attack.update = "scale"``). Here each malicious client trains ``attack.local_steps``
optimizer steps (none: its recipe budget) with base learning rate ``attack.lr`` (none:
``client.lr``); the learning-rate schedule (warm-up, decay) still shapes the steps.
Honest clients are untouched. The reply's ``steps`` and ``lr_sum`` metrics say what the
client ran, as they would from a real client that reports honestly about itself.

The simulator only, in federated mode, with some attack set (``attack.data`` or
``attack.update``) and some malicious client (the budget of nobody is refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config

NAME = "attack_budget"
"""The algorithm's name (its client plug-in's too)."""


@ALGORITHMS.register(NAME)
class AttackBudget:
    """``attack.local_steps`` and ``attack.lr``: the malicious clients' own budget."""

    # late among the client plug-ins, before the update attack (99), which crafts from
    # the update this budget trained (the order of the steps and rate hooks does not
    # matter: a kept optimizer state keeps the optimizer's learning rate as it is)
    order = 98
    modes = ("federated",)
    modes_why = "it is the budget of malicious clients of a federation"

    def setting(self, config: Config) -> str | None:
        attack = config.attack
        set_ = [
            f"attack.{key} = {value}"
            for key, value in (("local_steps", attack.local_steps), ("lr", attack.lr))
            if value is not None
        ]
        return ", ".join(set_) if set_ else None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        refused = [
            (
                "local_dp",
                "each client's privacy ledger charges the recipe's steps, not the attacker's",
            ),
            (
                "fednova",
                "it divides each update by the steps and rates its client reports, which "
                "undoes the attacker's budget (a real attacker would report the recipe's)",
            ),
        ]
        if config.attack.from_round > 1:
            refused.append(
                (
                    "run_schedule",
                    "a run-long schedule places each round at the recipe's steps of the "
                    "rounds before; with attack.from_round > 1 the attacker's would jump back",
                )
            )
        return refused

    def problem(self, config: Config) -> str | None:
        attack = config.attack
        switched = self.setting(config)
        if not attack.on:
            return (
                f"{switched} is the malicious clients' own budget, but no attack is set: set "
                "attack.data or attack.update (or drop it)"
            )
        if not attack.clients and attack.fraction == 0:
            return (
                f"{switched} is the malicious clients' own budget, but there are none: set "
                "attack.fraction (> 0) or attack.clients"
            )
        if config.runtime.engine != "simulation":
            return (
                f"{switched} is simulated: it needs runtime.engine = 'simulation' (a Flower "
                "node cannot tell whether it is a malicious client)"
            )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.attacks.budget_client import AttackerBudget
        from fedllm.security.attacks.targets import malicious_clients

        config = setup.ws.config
        attack = config.attack
        off = attack.local_steps is None and attack.lr is None
        if off or setup.mode != "federated" or setup.partial:
            return None
        malicious = frozenset(malicious_clients(attack, setup.clients, config.seed))
        plugin = AttackerBudget(malicious, attack.from_round, attack.local_steps, attack.lr)
        return Algorithm(NAME, client=plugin)
