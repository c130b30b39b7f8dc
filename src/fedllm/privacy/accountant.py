"""User-level privacy accounting of DP-FedAvg rounds with dp-accounting (RDP or PLD).

A round of DP-FedAvg is a sampled Gaussian mechanism on the clients: a cohort is
drawn, each update is clipped to norm C, and Gaussian noise of std ``z x C`` is
added to their sum. How the cohort is drawn decides the neighbouring relation, and
the relation the l2-sensitivity of the released sum:

- ``poisson``: every client joins independently with probability ``q``
  (add-or-remove-one neighbours: one client's whole data moves the sum by at most
  C, sensitivity C, so dp-accounting gets z itself; RDP and PLD both account it);
- ``fixed``: a cohort of exactly ``m`` of the ``N`` clients, drawn uniformly without
  replacement, as fedllm's round sampling draws it (replace-one neighbours: replacing
  a client's +C by -C moves the sum by up to 2C, sensitivity 2C, so dp-accounting
  gets z / 2, see :func:`replace_one_multiplier`; RDP only, dp-accounting's PLD does
  not model sampling without replacement). A cohort of every client is the plain
  Gaussian mechanism at the same sensitivity 2C.

The same accountant charges record-level DP-SGD, whose lots are fixed-size samples
of a client's examples (``fixed``, sensitivity 2C per step).

The accountant holds the rounds spent so far (checkpointed as a count, the
mechanism being fixed by the config), answers the epsilon at the configured delta
after any number of rounds, how many rounds a budget allows, and which noise
multiplier spends a budget in a planned number of rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

Sampling = Literal["poisson", "fixed"]
AccountantKind = Literal["rdp", "pld"]

RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    128.0,
    256.0,
    512.0,
)
"""The Renyi orders tried (Opacus's defaults, plus three large ones for tiny epsilons)."""


NOISE_BRACKET = (1e-3, 1e3)
"""The noise multipliers a budget is calibrated within (larger: the update is all noise)."""


class PrivacyConfigError(ValueError):
    """A mechanism or budget the accountant cannot account (with what would be valid)."""


@dataclass(frozen=True)
class Mechanism:
    """One round's privacy mechanism.

    Attributes:
        noise_multiplier: the noise std divided by the clip norm (z >= 0; 0: no privacy).
        clients: clients in the federation (N).
        cohort: clients sampled per round (m; the expected number under ``poisson``).
        sampling: how the cohort is drawn (see the module docstring).
    """

    noise_multiplier: float
    clients: int
    cohort: int
    sampling: Sampling = "fixed"

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0:
            raise PrivacyConfigError(
                f"noise multiplier = {self.noise_multiplier}: must be >= 0 (noise std / clip)"
            )
        if not 1 <= self.cohort <= self.clients:
            raise PrivacyConfigError(
                f"cohort of {self.cohort} from {self.clients} clients: it must be 1 to "
                f"{self.clients}"
            )
        if self.sampling not in ("poisson", "fixed"):
            raise PrivacyConfigError(f"sampling = {self.sampling!r}: must be 'poisson' or 'fixed'")

    @property
    def sampling_rate(self) -> float:
        """The probability a given client takes part in a round (q = m / N)."""
        return self.cohort / self.clients

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        """The neighbouring relation the round is accounted under (module docstring)."""
        if self.sampling == "fixed":
            return dp_accounting.NeighboringRelation.REPLACE_ONE
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    def round_event(self) -> dp_accounting.DpEvent:
        """One round as a dp-accounting event."""
        if self.sampling == "poisson":
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
            if self.cohort == self.clients:
                return gaussian
            return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        gaussian = dp_accounting.GaussianDpEvent(replace_one_multiplier(self.noise_multiplier))
        if self.cohort == self.clients:
            return gaussian
        return dp_accounting.SampledWithoutReplacementDpEvent(self.clients, self.cohort, gaussian)

    def rounds_event(self, rounds: int) -> dp_accounting.DpEvent:
        """``rounds`` rounds composed."""
        return dp_accounting.SelfComposedDpEvent(self.round_event(), rounds)


def replace_one_multiplier(noise_multiplier: float) -> float:
    """The argument dp-accounting's Gaussian event needs under replace-one neighbours:
    the noise std over the **l2-sensitivity of the released sum**, which is 2C there
    (replace a client's clipped +C by -C), so ``z / 2`` for fedllm's ``z = std / C``.

    dp-accounting's ``SampledWithoutReplacementDpEvent`` (Wang, Balle & Kasiviswanathan
    2019, Theorem 27) and ``GaussianDpEvent`` take "the ratio of the standard deviation
    of the Gaussian noise to the l2-sensitivity of the function to which it is added";
    passing ``z`` itself understates the RDP by a factor of 4. Reported upstream as
    google/differential-privacy issue #378 (PR #464); this is the one place the
    correction lives, to remove when dp-accounting's event takes the clip norm.
    """
    return noise_multiplier / 2


class PrivacyAccountant:
    """Epsilon at ``delta`` of a :class:`Mechanism` run for some rounds.

    Args:
        mechanism: the round's mechanism.
        delta: the target delta (0 < delta < 1; commonly below 1 / clients).
        kind: ``"rdp"`` (Renyi DP, :data:`RDP_ORDERS` or ``orders``) or ``"pld"``
            (privacy loss distributions: tighter, slower; Poisson sampling only).
        orders: the Renyi orders to try (RDP only).

    Raises:
        PrivacyConfigError: a delta outside (0, 1), or PLD with fixed-size cohorts.
    """

    def __init__(
        self,
        mechanism: Mechanism,
        delta: float,
        kind: AccountantKind = "rdp",
        orders: tuple[float, ...] = RDP_ORDERS,
        pld_interval: float = 1e-4,
    ) -> None:
        if not 0 < delta < 1:
            raise PrivacyConfigError(f"delta = {delta}: must be in (0, 1), e.g. 1e-5")
        if kind not in ("rdp", "pld"):
            raise PrivacyConfigError(f"accountant = {kind!r}: must be 'rdp' or 'pld'")
        sampled = mechanism.cohort < mechanism.clients
        if kind == "pld" and sampled and mechanism.sampling == "fixed":
            raise PrivacyConfigError(
                "the PLD accountant cannot account fixed-size cohorts (sampling without "
                "replacement); use accountant = 'rdp', or sampling = 'poisson'"
            )
        self.mechanism, self.delta, self.kind, self.orders = mechanism, delta, kind, orders
        self.pld_interval = pld_interval
        self.rounds = 0

    def _fresh(self, mechanism: Mechanism) -> dp_accounting.PrivacyAccountant:
        relation = mechanism.relation
        if self.kind == "pld":
            return pld.PLDAccountant(
                neighboring_relation=relation, value_discretization_interval=self.pld_interval
            )
        return rdp.RdpAccountant(orders=list(self.orders), neighboring_relation=relation)

    def epsilon(self, rounds: int | None = None, mechanism: Mechanism | None = None) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds (the rounds spent if None);
        0 after none, infinite with no noise."""
        rounds = self.rounds if rounds is None else rounds
        mechanism = mechanism or self.mechanism
        if rounds == 0:
            return 0.0
        if mechanism.noise_multiplier == 0:
            return float("inf")
        accountant = self._fresh(mechanism)
        with _quiet_absl():
            accountant.compose(mechanism.rounds_event(rounds))
            return float(accountant.get_epsilon(self.delta))

    def spend(self, rounds: int = 1) -> float:
        """Record ``rounds`` more rounds; the epsilon spent so far."""
        self.rounds += rounds
        return self.epsilon()

    def rounds_within(self, target_epsilon: float, limit: int) -> int:
        """The most rounds (at most ``limit``) whose epsilon stays <= ``target_epsilon``."""
        low, high = 0, limit  # epsilon grows with rounds: bisect on the count
        while low < high:
            middle = (low + high + 1) // 2
            if self.epsilon(middle) <= target_epsilon:
                low = middle
            else:
                high = middle - 1
        return low

    def _pld_bracket(self, target_epsilon: float, rounds: int) -> tuple[float, float]:
        return _pld_bracket_of(self, target_epsilon, rounds)

    def noise_for(self, target_epsilon: float, rounds: int) -> float:
        """The smallest noise multiplier whose ``rounds`` rounds spend at most
        ``target_epsilon`` (dp-accounting's calibration).

        Raises:
            PrivacyConfigError: a target <= 0 or no rounds.
        """
        if not target_epsilon > 0 or rounds < 1:
            raise PrivacyConfigError(
                f"target epsilon {target_epsilon} over {rounds} rounds: the target must be "
                "> 0 and the rounds at least 1"
            )
        base = self.mechanism

        def event(z: float) -> dp_accounting.DpEvent:
            return Mechanism(z, base.clients, base.cohort, base.sampling).rounds_event(rounds)

        low, high = NOISE_BRACKET
        if self.kind == "pld" and self.pld_interval < PLD_CALIBRATION_INTERVAL:
            # calibrate on a coarser grid: its pessimistic PLD bounds the finer one's, so
            # the z it finds spends at most the target here too, ten times faster
            coarse = PrivacyAccountant(
                base, self.delta, "pld", self.orders, PLD_CALIBRATION_INTERVAL
            )
            return coarse.noise_for(target_epsilon, rounds)
        if self.kind == "pld":  # tiny noise would need a PLD of tens of GiB: bracket first
            low, high = self._pld_bracket(target_epsilon, rounds)
        with _quiet_absl():
            floor = self.epsilon(rounds, Mechanism(high, base.clients, base.cohort, base.sampling))
            if floor > target_epsilon:
                raise PrivacyConfigError(
                    f"privacy.target_epsilon = {target_epsilon:g} is out of reach: even noise "
                    f"multiplier {high:g} spends epsilon {floor:.4g} in {rounds} round(s) with "
                    f"{base.cohort} of {base.clients} per round at delta {self.delta:g}; raise "
                    "the budget or privacy.delta, or plan fewer rounds (server.rounds)"
                )
            z = dp_accounting.calibrate_dp_mechanism(
                lambda: self._fresh(base),
                event,
                target_epsilon,
                self.delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
                tol=1e-4,
            )
        return float(z)


PLD_CALIBRATION_INTERVAL = 1e-3
"""The privacy-loss grid a PLD calibration uses (reports use dp-accounting's 1e-4)."""

PLD_FLOOR = 0.1
"""The smallest noise multiplier a PLD calibration tries (below, its discretised
privacy-loss distribution outgrows memory)."""


def _pld_bracket_of(
    accountant: PrivacyAccountant, target: float, rounds: int
) -> tuple[float, float]:
    """Noise multipliers around the PLD solution without evaluating tiny ones: RDP's
    calibrated z spends at most the target under PLD too (PLD is the tighter bound),
    so it is the top; the bottom halves from there while PLD still stays within."""
    base = accountant.mechanism
    rdp = PrivacyAccountant(base, accountant.delta, "rdp", accountant.orders)  # no PLD grid
    high = rdp.noise_for(target, rounds)
    low = high / 2
    while (
        low > PLD_FLOOR
        and accountant.epsilon(rounds, Mechanism(low, base.clients, base.cohort, base.sampling))
        <= target
    ):
        low /= 2
    return max(low, PLD_FLOOR), high


class _quiet_absl:
    """Silence absl's per-order convergence warnings (orders it drops, not errors)."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *_: object) -> None:
        self._logger.setLevel(self._level)
