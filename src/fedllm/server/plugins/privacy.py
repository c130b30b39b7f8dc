"""The server's privacy ledger: epsilon after every round, and a budget never overspent.

Every round played is charged, also one whose aggregate was not applied (skipped
rounds still sampled clients and say so: counting them keeps the bound safe). The
ledger checkpoints the rounds charged and the noise multiplier charged for them,
so a resumed run goes on from the same spend with the same noise, even if its
``server.rounds`` grew (a derived multiplier is not derived again).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedllm.privacy.accountant import PrivacyAccountant
from fedllm.privacy.plan import CentralPlan
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import Params

EPSILON = "epsilon"
"""Record key of the epsilon spent after the round (at the plan's delta)."""


class PrivacyLedger(ServerPlugin):
    """Charges each round to an accountant; stops the run before the budget is exceeded.

    Args:
        plan: the run's mechanism, delta and budget.
    """

    name = "privacy"

    def __init__(self, plan: CentralPlan) -> None:
        self.plan = plan
        self.accountant: PrivacyAccountant = plan.accountant()
        self.spent = 0.0

    def end_round(self, ctx: RoundContext) -> None:
        self.spent = self.accountant.spend()
        ctx.record.extra[EPSILON] = self.spent

    def stop_reason(self) -> str | None:
        target = self.plan.target_epsilon
        if target is None:
            return None
        following = self.accountant.epsilon(self.accountant.rounds + 1)
        if following <= target:
            return None
        return (
            f"budget spent: epsilon {self.spent:.4g} of privacy.target_epsilon = {target} "
            f"after {self.accountant.rounds} round(s) (delta {self.plan.delta}); one more "
            f"round would reach {following:.4g}"
        )

    def state(self) -> tuple[Params, dict[str, Any]]:
        multiplier = self.accountant.mechanism.noise_multiplier
        return {}, {"rounds": self.accountant.rounds, "noise_multiplier": multiplier}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        if not meta:
            return
        mechanism = replace(self.accountant.mechanism, noise_multiplier=meta["noise_multiplier"])
        self.accountant.mechanism = mechanism
        self.accountant.rounds = int(meta["rounds"])
        self.spent = self.accountant.epsilon()

    def summary(self) -> dict[str, Any]:
        mechanism = self.accountant.mechanism
        return {
            EPSILON: self.spent,
            "delta": self.plan.delta,
            "target_epsilon": self.plan.target_epsilon,
            "noise_multiplier": mechanism.noise_multiplier,
            "noise_multiplier_derived": self.plan.derived,
            "update_noise_multiplier": self.plan.update_noise,
            "clip_count_noise": self.plan.count_noise,
            "accountant": self.plan.kind,
            "sampling": mechanism.sampling,
            "clients": mechanism.clients,
            "cohort": mechanism.cohort,
            "rounds_charged": self.accountant.rounds,
        }
