"""The central-DP plan of a run: the mechanism the accountant charges, the noise each
query gets, and the budget, fixed before the first round.

With adaptive clipping two noisy queries run per round: the clipped updates' sum
(noise multiplier ``z_update``) and the centred count of unclipped updates (noise std
``count_noise``; :func:`fedllm.privacy.central_dp.quantile.centred_count`). Andrew et al. (2021,
Theorem 1) show they compose to one Gaussian mechanism of multiplier
``(z_update^-2 + (2 count_noise)^-2)^-1/2``: under add-or-remove the sum moves by C
and the centred count by 1/2; under replace-one by 2C and 1, the same ratio, so the
accountant's replace-one correction (:func:`fedllm.privacy.accountant.replace_one_multiplier`)
covers both queries. The accounted multiplier is the configured one, so the update's
noise is raised to ``(z^-2 - (2 count_noise)^-2)^-1/2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from fedllm.privacy.accountant import (
    AccountantKind,
    Mechanism,
    PrivacyAccountant,
    PrivacyConfigError,
    Sampling,
)
from fedllm.privacy.settings import PrivacyConfig

COUNT_NOISE_SHARE = 20.0
"""Andrew et al.'s default count noise: the expected cohort divided by this."""


@dataclass(frozen=True)
class CentralPlan:
    """What a run of user-level DP-FedAvg spends, decided before it trains.

    Attributes:
        mechanism: the round's mechanism as the accountant charges it.
        update_noise: the noise multiplier on the clipped updates' sum.
        count_noise: the std of the noise on the unclipped-update count (adaptive
            clipping; 0 without it).
        delta: the delta epsilon is reported at.
        kind: the accountant (``"rdp"`` or ``"pld"``).
        target_epsilon: the budget the run must stay within, or None.
        derived: the noise multiplier was derived from the budget (not configured).
    """

    mechanism: Mechanism
    update_noise: float
    count_noise: float
    delta: float
    kind: AccountantKind
    target_epsilon: float | None
    derived: bool

    def accountant(self) -> PrivacyAccountant:
        """A fresh accountant of this plan (no rounds spent)."""
        return PrivacyAccountant(self.mechanism, self.delta, self.kind)


def plan_central(
    privacy: PrivacyConfig, clients: int, cohort: int, sampling: Sampling, rounds: int
) -> CentralPlan:
    """The plan of a ``privacy.dp = 'central'`` run.

    Args:
        privacy: the ``[privacy]`` section.
        clients: clients in the federation (N).
        cohort: clients sampled per round (expected, under Poisson sampling).
        sampling: how cohorts are drawn.
        rounds: the rounds planned (``server.rounds``): a derived noise multiplier
            spends ``target_epsilon`` in exactly these.

    Raises:
        PrivacyConfigError: a budget that even one round exceeds, count noise too small
            to share the multiplier, or a mechanism the accountant cannot account.
    """
    check_delta(privacy.delta, clients, "clients")
    cohort = min(cohort, clients)
    count_noise = 0.0
    if privacy.adaptive_clip:
        count_noise = (
            privacy.clip_count_noise
            if privacy.clip_count_noise is not None
            else cohort / COUNT_NOISE_SHARE
        )
    z, derived = privacy.noise_multiplier, False
    if z is None:
        assert privacy.target_epsilon is not None  # the section's validator ensures it
        z = _derived_noise(
            privacy.target_epsilon,
            privacy.delta,
            privacy.accountant,
            clients,
            cohort,
            sampling,
            rounds,
        )
        derived = True
    mechanism = Mechanism(z, clients, cohort, sampling)
    plan = CentralPlan(
        mechanism,
        update_noise_multiplier(z, count_noise),
        count_noise,
        privacy.delta,
        privacy.accountant,
        privacy.target_epsilon,
        derived,
    )
    target = privacy.target_epsilon
    if target is not None:
        first = plan.accountant().epsilon(1)
        if first > target:
            raise PrivacyConfigError(
                f"privacy.target_epsilon = {target} is below what one round spends "
                f"(epsilon {first:.4g} at delta {privacy.delta} with noise multiplier {z:.4g}); "
                "raise privacy.noise_multiplier or the budget"
            )
    return plan


def check_delta(delta: float, units: int, what: str) -> None:
    """Refuse a delta of 1 / ``units`` or more: a mechanism that publishes one unit's
    data outright with probability delta would satisfy it.

    Raises:
        PrivacyConfigError: ``delta >= 1 / units``, naming the bound.
    """
    if delta >= 1 / units:
        raise PrivacyConfigError(
            f"privacy.delta = {delta:g} is not below 1 / {units} ({what}): a mechanism that "
            f"releases one of them in the clear with probability delta would meet it; set "
            f"privacy.delta well below {1 / units:.3g}, e.g. {min(1e-5, 0.1 / units):.0e}"
        )


def accounted_sampling(server_sampling: str) -> Sampling:
    """How the accountant models ``server.sampling``: fixed-size uniform cohorts, or
    Poisson.

    Raises:
        PrivacyConfigError: a sampling no accountant here models.
    """
    if server_sampling == "uniform":
        return "fixed"
    if server_sampling == "poisson":
        return "poisson"
    raise PrivacyConfigError(
        f"server.sampling = {server_sampling!r} is not modelled by the DP accountant: use "
        "'uniform' (fixed-size cohorts) or 'poisson'"
    )


def update_noise_multiplier(accounted: float, count_noise: float) -> float:
    """The multiplier on the updates' sum that, beside a count with noise std
    ``count_noise``, spends ``accounted`` (Andrew et al. 2021); ``accounted`` itself
    without count noise.

    Raises:
        PrivacyConfigError: the count noise alone spends more than ``accounted`` allows.
    """
    if count_noise == 0 or accounted == 0:
        return accounted
    remaining = accounted**-2 - (2 * count_noise) ** -2
    if remaining <= 0:
        raise PrivacyConfigError(
            f"privacy.clip_count_noise = {count_noise:.4g} is too small to share noise "
            f"multiplier {accounted:.4g} with the count of unclipped updates; it must exceed "
            f"{accounted / 2:.4g} (half the noise multiplier): raise privacy.clip_count_noise"
        )
    return math.sqrt(1 / remaining)


@lru_cache(maxsize=16)
def _derived_noise(
    target: float,
    delta: float,
    kind: AccountantKind,
    clients: int,
    cohort: int,
    sampling: Sampling,
    rounds: int,
) -> float:
    """The smallest noise multiplier spending ``target`` in ``rounds`` rounds (cached: the
    server's pipeline and its accountant ask for the same one)."""
    probe = PrivacyAccountant(Mechanism(1.0, clients, cohort, sampling), delta, kind)
    return probe.noise_for(target, rounds)


@dataclass(frozen=True)
class LocalPlan:
    """What one client's record-level DP-SGD spends: each optimizer step is a Gaussian
    mechanism on a lot of ``lot`` of its ``examples``, drawn uniformly without
    replacement (replace-one neighbours, RDP).

    Attributes:
        mechanism: one step's mechanism (``clients`` = the client's examples, ``cohort``
            = the lot; the names are the accountant's).
        delta: the delta epsilon is reported at.
        target_epsilon: the client's budget, or None.
        derived: the noise multiplier was derived from the budget.
    """

    mechanism: Mechanism
    delta: float
    target_epsilon: float | None
    derived: bool

    def accountant(self) -> PrivacyAccountant:
        """A fresh accountant of this plan (no steps spent)."""
        return PrivacyAccountant(self.mechanism, self.delta, "rdp")

    def for_client(self, examples: int, lot: int) -> LocalPlan:
        """The same noise on a client with ``examples`` examples and lots of ``lot``."""
        mechanism = Mechanism(self.mechanism.noise_multiplier, examples, min(lot, examples))
        return LocalPlan(mechanism, self.delta, self.target_epsilon, self.derived)

    def epsilon(self, steps: int) -> float:
        """Epsilon after ``steps`` optimizer steps (cached: a client and the server's
        ledger ask for the same numbers)."""
        m = self.mechanism
        return _local_epsilon(m.noise_multiplier, m.clients, m.cohort, steps, self.delta)


def plan_local(
    privacy: PrivacyConfig, examples: int, lot: int, steps_per_round: int, rounds: int
) -> LocalPlan:
    """The DP-SGD plan of the federation's most exposed client (the highest sampling
    rate ``lot / examples``, with the most steps per round of any client: a bound on
    every client); a derived noise multiplier spends ``target_epsilon`` if that client
    trains in every one of the ``rounds`` planned rounds. Every client uses its noise
    multiplier (:meth:`LocalPlan.for_client`) and spends at most what this plan does.

    Args:
        privacy: the ``[privacy]`` section.
        examples: the client's training examples (> 0).
        lot: examples per optimizer step (``batch_size x grad_accum``, at most ``examples``).
        steps_per_round: its optimizer steps per round.
        rounds: ``server.rounds``.

    Raises:
        PrivacyConfigError: a budget that one round's steps already exceed.
    """
    check_delta(privacy.delta, examples, "training records of the most exposed client")
    lot = min(lot, examples)
    z, derived = privacy.noise_multiplier, False
    if z is None:
        assert privacy.target_epsilon is not None  # the section's validator ensures it
        z = _derived_noise(
            privacy.target_epsilon,
            privacy.delta,
            "rdp",
            examples,
            lot,
            "fixed",
            rounds * steps_per_round,
        )
        derived = True
    plan = LocalPlan(
        Mechanism(z, examples, lot, "fixed"), privacy.delta, privacy.target_epsilon, derived
    )
    target = privacy.target_epsilon
    if target is not None and plan.epsilon(steps_per_round) > target:
        raise PrivacyConfigError(
            f"privacy.target_epsilon = {target} is below what one round of DP-SGD spends on a "
            f"client with {examples} examples ({steps_per_round} steps of {lot}: epsilon "
            f"{plan.epsilon(steps_per_round):.4g} with noise multiplier {z:.4g}); raise "
            "privacy.noise_multiplier or the budget, or train fewer local steps"
        )
    return plan


@lru_cache(maxsize=4096)
def _local_epsilon(z: float, examples: int, lot: int, steps: int, delta: float) -> float:
    return PrivacyAccountant(Mechanism(z, examples, lot, "fixed"), delta).epsilon(steps)
