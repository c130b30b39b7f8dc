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
from fedllm.privacy.plan import CentralPlan, LocalPlan
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import ClientId, ClientUpdate, Params, RoundRecord

EPSILON = "epsilon"
"""Record key of the epsilon spent after the round (at the plan's delta)."""


class PrivacyLedger(ServerPlugin):
    """Charges each round to an accountant; stops the run before the budget is exceeded.

    Args:
        plan: the run's mechanism, delta and budget.
    Every start of a round is charged, finished or not: a round that a crash cut
    short may have released its noisy sum (to the server under SecAgg, to the eval
    clients and the next cohorts through the broadcast), and its replay releases
    another under secure randomness.
    """

    name = "privacy"

    def __init__(self, plan: CentralPlan) -> None:
        self.plan = plan
        self.accountant: PrivacyAccountant = plan.accountant()
        self.spent = 0.0
        self.replayed = 0

    def baseline(self, record: RoundRecord) -> None:
        record.extra[EPSILON] = 0.0

    def charge_replayed(self, rounds: int) -> None:
        self.replayed += rounds
        self.spent = self.accountant.spend(rounds)

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
        meta = {"rounds": self.accountant.rounds, "noise_multiplier": multiplier}
        return {}, {**meta, "replayed": self.replayed}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        if not meta:
            return
        mechanism = replace(self.accountant.mechanism, noise_multiplier=meta["noise_multiplier"])
        self.accountant.mechanism = mechanism
        self.accountant.rounds = int(meta["rounds"])
        self.replayed = int(meta.get("replayed", 0))
        self.spent = self.accountant.epsilon()

    def summary(self) -> dict[str, Any]:
        mechanism = self.accountant.mechanism
        return {
            EPSILON: self.spent,
            "level": "user",
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
            "replayed_rounds_charged": self.replayed,
        }


LOCAL_EPSILON = "local_epsilon"
"""A DP-SGD client's reply metric: its own epsilon so far."""


class LocalLedger(ServerPlugin):
    """The server's bound on record-level DP-SGD: no client has spent more than the
    most exposed client's plan would after the most steps any client has taken.

    The level is "record" because the data build makes every training example of such
    a run exactly one record (``privacy.per_record()``), cut to ``data.seq_len`` tokens
    where longer.

    Args:
        bound: the plan of the highest sampling rate (see
            :func:`fedllm.privacy.plan.plan_local`).
        steps: each client's optimizer steps per round.
        truncated: the training records cut to ``data.seq_len``, summed over the
            clients; None where this process does not hold their data.
    """

    name = "privacy"

    def __init__(
        self, bound: LocalPlan, steps: dict[ClientId, int], truncated: int | None = None
    ) -> None:
        self.bound, self.steps_per_round, self.truncated = bound, steps, truncated
        self.steps = dict.fromkeys(steps, 0)
        self.reported: dict[ClientId, float] = {}

    def accept(self, ctx: RoundContext, update: ClientUpdate, weight: float) -> None:
        if LOCAL_EPSILON in update.metrics:
            self.reported[update.client_id] = update.metrics[LOCAL_EPSILON]

    def baseline(self, record: RoundRecord) -> None:
        record.extra[EPSILON] = 0.0

    def charge_replayed(self, rounds: int) -> None:
        """Clients of a half-played round sent noisy updates already: charge every
        client the round's steps (which ones trained is not known after a crash)."""
        for client in self.steps:
            self.steps[client] += rounds * self.steps_per_round[client]

    def end_round(self, ctx: RoundContext) -> None:
        trained = [*ctx.record.accepted, *(r["client"] for r in ctx.record.rejected)]
        for client in trained:
            if client in self.steps:  # a client that replied trained, accepted or not
                self.steps[client] += self.steps_per_round[client]
        ctx.record.extra[EPSILON] = self.spent()

    def spent(self) -> float:
        """The bound on any client's epsilon so far."""
        return self.bound.epsilon(max(self.steps.values(), default=0))

    def stop_reason(self) -> str | None:
        target = self.bound.target_epsilon
        if target is None:
            return None
        most = max(self.steps.values(), default=0)
        following = self.bound.epsilon(most + max(self.steps_per_round.values(), default=0))
        if following <= target:
            return None
        return (
            f"budget spent: a client may have spent epsilon {self.spent():.4g} of "
            f"privacy.target_epsilon = {target} (record-level, delta {self.bound.delta}); "
            f"one more round could reach {following:.4g}"
        )

    def state(self) -> tuple[Params, dict[str, Any]]:
        return {}, {"steps": self.steps, "reported": self.reported}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        if meta:
            self.steps.update(meta["steps"])
            self.reported.update(meta["reported"])

    def summary(self) -> dict[str, Any]:
        mechanism = self.bound.mechanism
        return {
            EPSILON: self.spent(),
            "level": "record",
            "example": "one record, cut to data.seq_len tokens where longer",
            "records_truncated": self.truncated,
            "delta": self.bound.delta,
            "target_epsilon": self.bound.target_epsilon,
            "noise_multiplier": mechanism.noise_multiplier,
            "noise_multiplier_derived": self.bound.derived,
            "accountant": "rdp",
            "sampling": "lots drawn uniformly without replacement",
            "client_epsilon": dict(sorted(self.reported.items())),
        }
