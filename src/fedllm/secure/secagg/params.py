"""The settings of one secure-aggregation round: threshold choice and dropout tolerance.

Threshold trade-off (Bell et al., CCS 2020). Each client's self-mask seed and mask key
are Shamir-shared t-of-k among its k neighbours.

* Robustness: a client's secrets are recoverable while at least t of its neighbours
  answer the unmask request, so each neighbourhood tolerates k - t dropouts.
* Privacy: the server learns a client's secrets only with t shares. t - 1 colluding
  neighbours learn nothing; and t > k / 2 stops a server that lies, telling some
  neighbours "u dropped" and others "u survived", from collecting t shares of both
  secrets (honest clients reveal at most one share per neighbour).

The default ``t = floor(2k/3) + 1`` is the smallest t above two thirds of the
neighbours: it resists collusion of up to 2k/3 neighbours and tolerates about k/3
dropouts per neighbourhood. ``threshold`` must lie in k/2 < t <= k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedllm.secure.secagg.ring import RingSpec

ConfigValue = bool | int | float | str | bytes


def default_threshold(degree: int) -> int:
    """t = floor(2k/3) + 1 for degree k (2 at k = 2, 6 at k = 8, 9 at k = 12)."""
    return 2 * degree // 3 + 1


def check_threshold(degree: int, threshold: int) -> None:
    """Refuse a threshold outside k/2 < t <= k.

    Raises:
        ValueError: naming the setting and the valid range.
    """
    if not degree // 2 < threshold <= degree:
        raise ValueError(
            f"secagg.threshold = {threshold} is invalid for degree {degree}; use "
            f"{degree // 2 + 1} <= threshold <= {degree}"
        )


def tolerated_dropouts(n: int, degree: int, threshold: int, min_survivors: int = 2) -> int:
    """How many clients may drop, in any phases and any pattern, with the round still
    finishing: ``min(k - t, n - min_survivors)`` (0 if negative).

    k - t is the worst case: all the dropouts among one surviving client's neighbours.
    One more there leaves it t - 1 shareholders and the round aborts; spread-out
    dropouts are tolerated far beyond this.
    """
    return max(0, min(degree - threshold, n - min_survivors))


def min_sum_inputs(min_clients: int) -> int:
    """The fewest masked inputs whose sum a round reveals: ``max(2, min_clients)`` (the
    sum of one input is that input). Below it the round aborts."""
    return max(2, min_clients)


def noise_shares(min_clients: int, colluders: int) -> int:
    """m, the noise shares of distributed DP that tolerate ``colluders`` colluding
    clients: each client adds N(0, (z C)^2 / m), ``m = max(2, min_clients) - colluders``.

    A revealed sum has n >= n_min = ``max(2, min_clients)`` inputs
    (:func:`min_sum_inputs`). A coalition of the server and c clients knows those
    clients' noise and subtracts it, leaving the noise of n - c clients: std
    ``z C sqrt((n - c) / m)``, at least the central mechanism's ``z C`` whenever
    ``n - c >= m``. With ``m = n_min - colluders`` that holds for every
    ``c <= colluders``; one colluder more (at n = n_min) leaves std
    ``z C sqrt((m - 1) / m) < z C``.

    Args:
        min_clients: ``server.min_clients``.
        colluders: the colluding clients the guarantee must survive (>= 0).

    Raises:
        ValueError: ``colluders`` < 0, or so many that no share is left (m < 1); the
            message names the settings and the fix.
    """
    if colluders < 0:
        raise ValueError(f"secagg.tolerated_colluders = {colluders} must be >= 0")
    fewest = min_sum_inputs(min_clients)
    shares = fewest - colluders
    if shares < 1:
        raise ValueError(
            f"secagg.tolerated_colluders = {colluders} cannot be tolerated: a revealed sum "
            f"may hold only {fewest} inputs (server.min_clients = {min_clients}), and "
            f"{colluders} colluders would know the noise of all of them; raise "
            f"server.min_clients to at least {colluders + 1} or lower "
            f"secagg.tolerated_colluders to at most {fewest - 1}"
        )
    return shares


def collusion_statement(min_clients: int, colluders: int) -> str:
    """One line for the start banner: the coalition distributed DP's guarantee survives.

    Raises:
        ValueError: as :func:`noise_shares`.
    """
    m = noise_shares(min_clients, colluders)
    fewest = min_sum_inputs(min_clients)
    who = "the server alone" if colluders == 0 else f"the server and up to {colluders} client(s)"
    return (
        f"distributed DP: the noise multiplier holds against {who} "
        f"(secagg.tolerated_colluders = {colluders}; each client adds std z C / sqrt({m}), "
        f"every revealed sum has >= {fewest} inputs); {colluders + 1} colluding client(s) "
        "could leave less noise than z C"
    )


def threat_model(signed: bool) -> str:
    """What SecAgg+ protects against, for the start banner and the docs.

    Args:
        signed: the clients sign their advertised keys with their nodes'
            authentication keys and verify them against the roster.
    """
    if not signed:
        return (
            "SecAgg+ here is the semi-honest variant: advertised keys are not signed, so "
            "updates are hidden from an honest-but-curious server (and from up to t - 1 "
            "colluding neighbours of a client), not from a server that substitutes keys"
        )
    return (
        "SecAgg+ with signed keys: each client verifies its neighbours' advertised keys "
        "against the roster of node keys, so the server cannot substitute them; it is "
        "still trusted to report who dropped truthfully (no consistency-check round)"
    )


THREAT_MODEL = threat_model(signed=False)
"""The threat model of a run whose advertised keys are unsigned (every run today: the
nodes' keys and roster are not yet passed to the protocol)."""


@dataclass(frozen=True)
class RoundParams:
    """What every client of a round must be told before it starts.

    Attributes:
        spec: the ring and fixed-point grid.
        threshold: t, the shares needed to reconstruct a client's secrets.
        round_id: the round (bound into every key and ciphertext).
    """

    spec: RingSpec
    threshold: int
    round_id: int

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"secagg.threshold = {self.threshold} must be >= 1")

    def to_config(self) -> dict[str, ConfigValue]:
        """The parameters as message config entries."""
        return {
            "secagg.bits": self.spec.bits,
            "secagg.clip_range": self.spec.clip_range,
            "secagg.clients": self.spec.clients,
            "secagg.threshold": self.threshold,
            "secagg.round": self.round_id,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> RoundParams:
        """The parameters from :meth:`to_config`'s entries.

        Raises:
            ValueError: an entry is missing, has the wrong type or is out of range.
        """
        clip = _entry(config, "secagg.clip_range")
        if not isinstance(clip, (int, float)) or isinstance(clip, bool):
            raise ValueError(f"secagg.clip_range must be a number, got {clip!r}")
        spec = RingSpec(_int(config, "secagg.bits"), float(clip), _int(config, "secagg.clients"))
        return cls(spec, _int(config, "secagg.threshold"), _int(config, "secagg.round"))


def _entry(config: Mapping[str, ConfigValue], name: str) -> ConfigValue:
    if name not in config:
        raise ValueError(f"the secure-aggregation config lacks {name!r}")
    return config[name]


def _int(config: Mapping[str, ConfigValue], name: str) -> int:
    value = _entry(config, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value
