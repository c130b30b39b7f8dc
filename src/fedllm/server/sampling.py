"""Seeded client sampling: which clients train in a round.

``server.sampling`` picks the strategy; :func:`build_sampler` is the one entry
point. Every cohort is a pure function of (seed, round), so a resumed run
draws the same cohorts as the uninterrupted one.

- ``uniform``: ``clients_per_round`` distinct clients, uniformly.
- ``size``: distinct clients drawn one after another, each with probability
  proportional to its number of training examples among those not yet drawn
  (successive sampling). With one client per round, client ``i`` is drawn
  with probability ``n_i / sum(n)``; with more, large clients are included
  less than proportionally, since none can be drawn twice. Clients without
  training examples are never drawn.
- ``trace``: uniformly among the clients online in the round (see
  :mod:`fedllm.server.availability`); all of them if fewer are online, an
  empty cohort if none is.
- ``poisson``: every client independently with probability
  ``clients_per_round / clients`` (the cohort's size varies, ``clients_per_round``
  on average; a round may be empty): the sampling DP accounting models as
  Poisson subsampling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from fedllm.seeding import derive_seed
from fedllm.server.availability import Availability, BernoulliAvailability, read_trace
from fedllm.server.settings import ServerConfig
from fedllm.types import ClientId


class Sampler(Protocol):
    """Picks each round's cohort."""

    def cohort(self, round_num: int) -> list[ClientId]:
        """The clients that train in round ``round_num`` (1-based), in client order."""
        ...

    def record_extra(self, round_num: int) -> dict[str, Any]:
        """Fields for the round's record (e.g. ``online``); empty if there are none."""
        ...


def sample_clients(
    clients: Sequence[ClientId], per_round: int, seed: int, round_num: int
) -> list[ClientId]:
    """``per_round`` distinct clients drawn uniformly, a pure function of (seed, round).

    Returns them in the order of ``clients``. If fewer clients exist, all are taken.
    """
    return draw_clients(clients, per_round, seed, "sample", round_num)


def draw_clients(
    clients: Sequence[ClientId], count: int, seed: int, *keys: object
) -> list[ClientId]:
    """``count`` distinct clients drawn uniformly with a seed derived from ``seed`` and
    ``keys``, in the order of ``clients`` (all of them if there are no more)."""
    if count >= len(clients):
        return list(clients)
    rng = np.random.default_rng(derive_seed(seed, *keys))
    chosen = set(rng.choice(len(clients), size=count, replace=False).tolist())
    return [cid for i, cid in enumerate(clients) if i in chosen]


class UniformSampler:
    """``per_round`` distinct clients, uniformly (:func:`sample_clients`)."""

    def __init__(self, clients: Sequence[ClientId], per_round: int, seed: int) -> None:
        self.clients = list(clients)
        self.per_round = per_round
        self.seed = seed

    def cohort(self, round_num: int) -> list[ClientId]:
        return sample_clients(self.clients, self.per_round, self.seed, round_num)

    def record_extra(self, round_num: int) -> dict[str, Any]:
        return {}


class SizeSampler:
    """``per_round`` distinct clients, drawn successively proportional to their sizes.

    Args:
        sizes: training examples of each client (>= 0), in client order.
        per_round: clients per round.
        seed: the run seed.
    """

    def __init__(self, sizes: Mapping[ClientId, int], per_round: int, seed: int) -> None:
        negative = {cid: n for cid, n in sizes.items() if n < 0}
        if negative:
            raise ValueError(f"client sizes must be >= 0, got {negative}")
        self.clients = list(sizes)
        self.drawable = [cid for cid, n in sizes.items() if n > 0]
        weights = np.array([sizes[cid] for cid in self.drawable], dtype=np.float64)
        self.p = weights / weights.sum() if self.drawable else weights
        self.per_round = per_round
        self.seed = seed

    def cohort(self, round_num: int) -> list[ClientId]:
        if self.per_round >= len(self.drawable):
            chosen = set(self.drawable)
        else:
            rng = np.random.default_rng(derive_seed(self.seed, "sample-size", round_num))
            picks = rng.choice(len(self.drawable), size=self.per_round, replace=False, p=self.p)
            chosen = {self.drawable[i] for i in picks.tolist()}
        return [cid for cid in self.clients if cid in chosen]

    def record_extra(self, round_num: int) -> dict[str, Any]:
        return {}


class TraceSampler:
    """``per_round`` distinct clients drawn uniformly among those online in the round.

    The draw among the online clients is :func:`sample_clients`, so a trace in
    which every client is always online gives the ``uniform`` cohorts.
    """

    def __init__(self, availability: Availability, per_round: int, seed: int) -> None:
        self.availability = availability
        self.per_round = per_round
        self.seed = seed

    def cohort(self, round_num: int) -> list[ClientId]:
        online = self.availability.online(round_num)
        return sample_clients(online, self.per_round, self.seed, round_num)

    def record_extra(self, round_num: int) -> dict[str, Any]:
        return {"online": self.availability.online(round_num)}


class PoissonSampler:
    """Each client independently with probability ``expected / len(clients)``.

    Args:
        clients: every client, in client order.
        expected: the expected cohort size (clamped to the number of clients).
        seed: the run seed.
    """

    def __init__(self, clients: Sequence[ClientId], expected: int, seed: int) -> None:
        self.clients = list(clients)
        self.rate = min(1.0, expected / len(self.clients)) if self.clients else 0.0
        self.seed = seed

    def cohort(self, round_num: int) -> list[ClientId]:
        rng = np.random.default_rng(derive_seed(self.seed, "sample-poisson", round_num))
        joins = rng.random(len(self.clients)) < self.rate
        return [cid for cid, joined in zip(self.clients, joins.tolist(), strict=True) if joined]

    def record_extra(self, round_num: int) -> dict[str, Any]:
        return {}


def build_sampler(cfg: ServerConfig, sizes: Mapping[ClientId, int], seed: int) -> Sampler:
    """The sampler named by ``server.sampling``.

    Args:
        cfg: the server section (``sampling``, ``clients_per_round``,
            ``availability``, ``availability_file``, ``rounds``).
        sizes: training examples of each client, in client order.
        seed: the run seed.

    Raises:
        ConfigError: a bad ``server.availability_file`` (see
            :func:`fedllm.server.availability.read_trace`).
    """
    return _BUILDERS[cfg.sampling](cfg, sizes, seed)


def _uniform(cfg: ServerConfig, sizes: Mapping[ClientId, int], seed: int) -> Sampler:
    return UniformSampler(list(sizes), cfg.clients_per_round, seed)


def _size(cfg: ServerConfig, sizes: Mapping[ClientId, int], seed: int) -> Sampler:
    return SizeSampler(sizes, cfg.clients_per_round, seed)


def _trace(cfg: ServerConfig, sizes: Mapping[ClientId, int], seed: int) -> Sampler:
    availability: Availability
    if cfg.availability_file is not None:
        availability = read_trace(cfg.availability_file, list(sizes), cfg.rounds)
    else:
        availability = BernoulliAvailability(list(sizes), cfg.availability, seed)
    return TraceSampler(availability, cfg.clients_per_round, seed)


def _poisson(cfg: ServerConfig, sizes: Mapping[ClientId, int], seed: int) -> Sampler:
    return PoissonSampler(list(sizes), cfg.clients_per_round, seed)


_BUILDERS: dict[str, Callable[[ServerConfig, Mapping[ClientId, int], int], Sampler]] = {
    "uniform": _uniform,
    "size": _size,
    "trace": _trace,
    "poisson": _poisson,
}
