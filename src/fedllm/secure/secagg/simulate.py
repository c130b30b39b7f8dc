"""A whole SecAgg+ round among in-process clients: the reference the tests and the cost
benchmark drive, with dropouts injected before any phase.

It calls the same state machines the round protocol does
(:class:`~fedllm.secure.secagg.client_round.SecAggClient`,
:class:`~fedllm.secure.secagg.server_round.SecAggServer`), without models or an engine, and
times each side and counts the payload bytes each client sends and receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from fedllm.secure.errors import SecAggAbort
from fedllm.secure.messages import encode_ids, pack_map
from fedllm.secure.randomness import SeededRandomness
from fedllm.secure.secagg.client_round import SecAggClient
from fedllm.secure.secagg.masking import wire_dtype
from fedllm.secure.secagg.params import RoundParams
from fedllm.secure.secagg.server_round import SecAggServer

T = TypeVar("T")

PHASES = ("advertise", "share", "masked", "unmask")
"""The four phases; a dropout plan names the phase a client stops answering at."""


@dataclass
class RoundCost:
    """Where a simulated round's time and bytes went.

    Attributes:
        client_s: each client's seconds in the protocol (key generation, sharing,
            masking, revealing; its training excluded).
        server_s: the server's seconds.
        bytes_up: each client's payload bytes sent.
        bytes_down: each client's payload bytes received.
    """

    client_s: dict[str, float] = field(default_factory=dict)
    server_s: float = 0.0
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)


@dataclass
class RoundOutcome:
    """A simulated round's result: the ring sum and who is in it, or why it aborted; and
    the clients the server dropped, with why."""

    total: NDArray[np.int64] | None
    survivors: list[str]
    abort: str | None
    cost: RoundCost
    dropped: dict[str, str] = field(default_factory=dict)


Tamper = Callable[[str, dict[str, bytes]], dict[str, bytes]]
"""A client id and its unmask reply -> what the server receives instead (a malicious
client, in tests)."""


def simulate_round(
    inputs: Mapping[str, NDArray[np.int64]],
    params: RoundParams,
    degree: int,
    seed: int,
    drops: Mapping[str, Set[str]] | None = None,
    min_survivors: int = 2,
    tamper: Tamper | None = None,
    signers: Mapping[str, ec.EllipticCurvePrivateKey] | None = None,
) -> RoundOutcome:
    """Run one round among ``inputs``' clients.

    Args:
        inputs: client id -> its quantised input (1-D int64, all the same length).
        params: the round's ring, threshold and id.
        degree: the neighbour graph's degree.
        seed: key material and the graph (seeded, for reproducibility).
        drops: phase name (:data:`PHASES`) -> clients that stop answering from it on.
        min_survivors: the fewest inputs whose sum may be revealed.
        tamper: rewrites each client's revealed shares before the server gets them.
        signers: each client's node authentication key: the clients sign their
            advertised keys and verify their neighbours' against the roster of these
            keys' public halves (the server too); None: unsigned.
    """
    plan = {phase: set(drops.get(phase, ())) for phase in PHASES} if drops else {}
    cohort = sorted(inputs)
    size = len(next(iter(inputs.values())))
    cost = RoundCost({c: 0.0 for c in cohort}, 0.0, dict.fromkeys(cohort, 0), {})
    cost.bytes_down = dict.fromkeys(cohort, 0)
    gone: set[str] = set()

    def answering(phase: str, asked: Set[str]) -> list[str]:
        gone.update(plan.get(phase, set()))
        return sorted(c for c in asked if c not in gone)

    def timed_server(work: Callable[[], T]) -> T:
        start = time.perf_counter()
        value = work()
        cost.server_s += time.perf_counter() - start
        return value

    roster = {c: key.public_key() for c, key in signers.items()} if signers else None
    server = timed_server(
        lambda: SecAggServer(params, cohort, degree, seed, size, min_survivors, roster)
    )
    clients: dict[str, SecAggClient] = {}
    try:
        for c in answering("advertise", set(cohort)):
            cost.bytes_down[c] += len(encode_ids(cohort))
            start = time.perf_counter()
            signer = signers.get(c) if signers else None
            rng = SeededRandomness(seed, "client", c)
            clients[c] = SecAggClient(c, params, cohort, rng, signer, roster)
            keys = clients[c].advertise()
            cost.client_s[c] += time.perf_counter() - start
            cost.bytes_up[c] += 64 + len(clients[c].signature)
            timed_server(partial(server.receive_keys, c, *keys, clients[c].signature))
        requests = timed_server(server.share_requests)
        for c in answering("share", set(requests)):
            cost.bytes_down[c] += len(pack_map(requests[c]))
            start = time.perf_counter()
            sealed = clients[c].share_keys(requests[c])
            cost.client_s[c] += time.perf_counter() - start
            cost.bytes_up[c] += len(pack_map(sealed))
            timed_server(partial(server.receive_shares, c, sealed))
        routed = timed_server(server.masked_requests)
        for c in answering("masked", set(routed)):
            cost.bytes_down[c] += len(pack_map(routed[c]))
            start = time.perf_counter()
            clients[c].receive_shares(routed[c])
            masked = clients[c].mask(inputs[c])
            cost.client_s[c] += time.perf_counter() - start
            cost.bytes_up[c] += wire_dtype(masked, params.spec.bits).nbytes
            timed_server(partial(server.receive_masked, c, masked))
        asked = timed_server(server.unmask_requests)
        for c in answering("unmask", set(asked)):
            alive, dropped = asked[c]
            cost.bytes_down[c] += len(encode_ids(alive)) + len(encode_ids(dropped))
            start = time.perf_counter()
            revealed = clients[c].unmask(alive, dropped)
            cost.client_s[c] += time.perf_counter() - start
            if tamper is not None:
                revealed = tamper(c, revealed)
            cost.bytes_up[c] += len(pack_map(revealed))
            timed_server(partial(server.receive_revealed, c, revealed))
        total, survivors = timed_server(server.result)
    except SecAggAbort as abort:
        return RoundOutcome(None, [], abort.reason, cost, dict(server.dropped))
    return RoundOutcome(total, survivors, None, cost, dict(server.dropped))
