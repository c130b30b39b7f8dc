"""SecAgg+ as a round protocol: advertise keys, share keys, masked input, unmask.

Four phases on the engine exchange, so the simulator and Flower run it alike. The
masked-input phase carries the training broadcast (the plug-ins' parts and the
pipeline's config among it): clients train as in a plain round, then send their
update quantised and masked. After the unmask phase the server holds only the sum of
the surviving clients' updates; its mean enters the pipeline as one update of weight
|survivors| (uniform weights), so the server halves, the plug-ins' processing and the
server optimizer run as after a plain round. A round that cannot finish leaves the
global model unchanged and records why (``ctx.abort``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from fedllm.message import ROUND, ConfigValue, Dropped, Message, Reply
from fedllm.protocol.driver import Phase
from fedllm.protocol.fedavg import TrainingSetup, TrainPhase
from fedllm.protocol.hidden import count_hidden, fold_revealed, refuse_hidden
from fedllm.protocol.tally import Tally
from fedllm.secure.errors import SecAggAbort, SecAggError, SecAggViolation
from fedllm.secure.keys import Roster
from fedllm.secure.messages import encode_ids, pack_map, unpack_keys, unpack_map
from fedllm.secure.secagg.graph import default_degree
from fedllm.secure.secagg.params import RoundParams, default_threshold
from fedllm.secure.secagg.parts import (
    ADVERTISE,
    COHORT,
    DROPPED,
    KEYS,
    MASKED,
    MASKED_INPUT,
    PUBLIC,
    REFUSED,
    REVEALED,
    SHARE,
    SHARES,
    SIGNATURE,
    SURVIVORS,
    UNMASK,
)
from fedllm.secure.secagg.ring import RingSpec, dequantise_sum
from fedllm.secure.secagg.server_round import SecAggServer
from fedllm.seeding import privacy_seed
from fedllm.server.plugin import RoundContext
from fedllm.types import ClientId

T = TypeVar("T")

SECAGG = "secagg"
"""The round record's entry of the protocol's counts, and the aggregate's client id."""


@dataclass(frozen=True)
class SecAggSettings:
    """The protocol's settings for every round.

    Attributes:
        bits: the ring's width.
        clip_range: each entry's clipping range before quantisation.
        clients: the largest cohort (the ring is sized for it).
        degree: neighbours per client, or None for the default of the cohort's size.
        threshold: shares that recover a secret, or None for the default.
        min_survivors: the fewest masked inputs whose sum may be revealed (>= 2).
        roster: every client's node public key where the clients sign their advertised
            keys (the server drops a client whose signature fails); None: unsigned.
        secure: draw each round's neighbour graph from the OS CSPRNG
            (``run.randomness = 'secure'``), so no one can place colluders around a
            target before the round.
    """

    bits: int
    clip_range: float
    clients: int
    degree: int | None
    threshold: int | None
    min_survivors: int
    roster: Roster | None = None
    secure: bool = False


class SecAggExchange:
    """The :data:`~fedllm.protocol.fedavg.Exchange` of secure aggregation."""

    def __init__(self, settings: SecAggSettings) -> None:
        self.settings = settings
        self.spec = RingSpec(settings.bits, settings.clip_range, settings.clients)

    def __call__(self, ctx: RoundContext, setup: TrainingSetup, tally: Tally) -> list[Phase]:
        state = _RoundState(ctx, setup, tally, self._server(ctx))
        return [_Advertise(state), _Share(state), _Masked(state), _Unmask(state)]

    def _server(self, ctx: RoundContext) -> SecAggServer | str:
        n, s = len(ctx.cohort), self.settings
        if n < 3:
            return f"secure aggregation needs at least 3 sampled clients, got {n}"
        # the configured graph was checked for the full cohort; a smaller cohort (fewer
        # clients available) takes the defaults where the configured values cannot serve
        degree = s.degree if s.degree is not None and s.degree < n else default_degree(n)
        threshold = default_threshold(degree)
        if s.threshold is not None and degree // 2 < s.threshold <= degree:
            threshold = s.threshold
        size = sum(t.numel() for t in ctx.params.values())
        params = RoundParams(self.spec, threshold, ctx.round)
        graph_seed = privacy_seed(ctx.seed, "secagg-graph", secure=s.secure)
        return SecAggServer(params, ctx.cohort, degree, graph_seed, size, s.min_survivors, s.roster)


class _RoundState:
    """What the four phases of one round share."""

    def __init__(
        self, ctx: RoundContext, setup: TrainingSetup, tally: Tally, server: SecAggServer | str
    ) -> None:
        self.ctx, self.setup, self.tally = ctx, setup, tally
        self.server: SecAggServer | None = None
        if isinstance(server, str):
            ctx.abort = server
        else:
            self.server = server
        self.counts: dict[str, Any] = {}
        ctx.record.extra[SECAGG] = self.counts

    def live(self) -> SecAggServer | None:
        """The server state while the round can still finish."""
        return self.server if self.ctx.abort is None else None

    def config(self, **entries: ConfigValue) -> dict[str, ConfigValue]:
        return {ROUND: self.ctx.round, **entries}

    def refused(self, client_id: ClientId, reply: Reply, phase: str) -> bool:
        """Drop a client that did not answer or refused; True if it did."""
        assert self.server is not None
        if isinstance(reply, Dropped):
            self.server.drop(client_id, f"{phase}: {reply.reason}")
            return True
        reason = _refusal(reply)
        if reason is not None:
            self.server.drop(client_id, f"{phase}: refused: {reason}")
            return True
        return False

    def guarded(self, step: Callable[[], T]) -> T | None:
        """Run ``step`` unless the round is over; an abort ends it with its reason (as
        does a violation the server's state machine let through: never a crash)."""
        if self.live() is None:
            return None
        try:
            return step()
        except SecAggAbort as abort:
            self.abort(abort.reason)
        except SecAggError as error:
            self.abort(str(error))
        return None

    def abort(self, reason: str) -> None:
        """End the round: nothing of it is used, and the record says why."""
        self.ctx.abort = f"secure aggregation aborted: {reason}"

    def take(self, client_id: ClientId, phase: str, step: Callable[[], None]) -> None:
        """Apply one reply's ``step``; a malformed reply drops its client."""
        assert self.server is not None
        try:
            step()
        except (SecAggViolation, KeyError, TypeError, ValueError) as error:
            self.server.drop(client_id, f"{phase}: {error}")

    def close(self, name: str, members: set[str]) -> None:
        self.counts[name] = len(members)
        if self.server is not None:
            self.counts["dropped"] = dict(sorted(self.server.dropped.items()))


class _Advertise:
    name = ADVERTISE

    def __init__(self, state: _RoundState) -> None:
        self.state = state

    def messages(self) -> Mapping[ClientId, Message]:
        server = self.state.live()
        if server is None:
            return {}
        config = self.state.config(
            **server.params.to_config(), **{COHORT: encode_ids(server.cohort)}
        )
        self.state.counts.update(
            degree=len(next(iter(server.graph.values()))),
            threshold=server.params.threshold,
            step=server.params.spec.step,
        )
        return {c: Message(config=config) for c in server.cohort}

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        server = self.state.server
        if server is None or self.state.refused(client_id, reply, "advertise"):
            return
        assert isinstance(reply, Message)
        self.state.take(
            client_id,
            "advertise",
            lambda: server.receive_keys(
                client_id, *unpack_keys(_payload(reply, PUBLIC)), _signature(reply)
            ),
        )

    def finish(self) -> None:
        server = self.state.server
        if server is not None:
            self.state.close("advertised", set(server.keys))
            if server.roster is not None:  # whose keys carried their node's signature
                self.state.counts["signed"] = len(server.signatures)


class _Share:
    name = SHARE

    def __init__(self, state: _RoundState) -> None:
        self.state = state

    def messages(self) -> Mapping[ClientId, Message]:
        server = self.state.live()
        requests = self.state.guarded(server.share_requests) if server else None
        if requests is None:
            return {}
        return {
            u: Message(config=self.state.config(**{KEYS: pack_map(keys)}))
            for u, keys in requests.items()
        }

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        server = self.state.server
        if server is None or self.state.refused(client_id, reply, "share keys"):
            return
        assert isinstance(reply, Message)
        self.state.take(
            client_id,
            "share keys",
            lambda: server.receive_shares(client_id, unpack_map(_payload(reply, SHARES))),
        )

    def finish(self) -> None:
        if self.state.server is not None:
            self.state.close("shared", self.state.server.shared)


class _Masked:
    """Train and send the masked update (the training broadcast plus the routed shares)."""

    name = MASKED

    def __init__(self, state: _RoundState) -> None:
        self.state = state
        self.train = TrainPhase(state.ctx, state.setup, state.tally)

    def messages(self) -> Mapping[ClientId, Message]:
        server = self.state.live()
        routed = self.state.guarded(server.masked_requests) if server else None
        if routed is None:
            return {}
        broadcast = next(iter(self.train.messages().values()))
        return {
            v: Message(
                arrays=broadcast.arrays,
                config={**broadcast.config, SHARES: pack_map(shares)},
            )
            for v, shares in routed.items()
        }

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        state, server = self.state, self.state.server
        if server is None:
            return
        refusal = None if isinstance(reply, Dropped) else _refusal(reply)
        if isinstance(reply, Message) and refusal is not None:
            refuse_hidden(state.tally, client_id, reply, f"refused: {refusal}")
        if state.refused(client_id, reply, "masked input"):
            return
        assert isinstance(reply, Message)
        vector = reply.arrays.get(MASKED_INPUT) if isinstance(reply.arrays, dict) else None
        if not isinstance(vector, torch.Tensor):
            server.drop(client_id, f"masked input: the reply lacks {MASKED_INPUT!r}")
            return
        if vector.dtype not in (torch.int32, torch.int64):
            server.drop(client_id, f"masked input: {vector.dtype}, not int32 or int64")
            return
        state.take(
            client_id,
            "masked input",
            lambda: server.receive_masked(client_id, vector.numpy().astype(np.int64)),
        )
        if client_id in server.masked:
            count_hidden(state.ctx, state.setup, state.tally, client_id, reply, 1.0)

    def finish(self) -> None:
        self.state.tally.close()
        if self.state.server is not None:
            self.state.close("masked", self.state.server.masked)


class _Unmask:
    """Reveal the shares, strip the masks, fold the survivors' mean into the pipeline."""

    name = UNMASK

    def __init__(self, state: _RoundState) -> None:
        self.state = state

    def messages(self) -> Mapping[ClientId, Message]:
        server = self.state.live()
        asked = self.state.guarded(server.unmask_requests) if server else None
        if asked is None:
            return {}
        return {
            v: Message(
                config=self.state.config(
                    **{SURVIVORS: encode_ids(alive), DROPPED: encode_ids(gone)}
                )
            )
            for v, (alive, gone) in asked.items()
        }

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        server = self.state.server
        if server is None or self.state.refused(client_id, reply, "unmask"):
            return
        assert isinstance(reply, Message)
        self.state.take(
            client_id,
            "unmask",
            lambda: server.receive_revealed(client_id, unpack_map(_payload(reply, REVEALED))),
        )

    def finish(self) -> None:
        state, server = self.state, self.state.server
        if server is None:
            return
        outcome = state.guarded(server.result)
        state.close("unmasked", server.answered)  # after the result: it may drop a client
        if outcome is None:
            return
        total, survivors = outcome
        try:
            plain = dequantise_sum(total, len(survivors), server.params.spec)
        except ValueError as error:  # result() checks the range; this is a second guard
            state.abort(f"the unmasked sum does not dequantise: {error}")
            return
        fold_revealed(state.ctx, state.setup, state.tally, SECAGG, plain, len(survivors))


def _refusal(reply: Message) -> str | None:
    value = reply.config.get(REFUSED) if isinstance(reply.config, dict) else None
    return None if value is None else str(value)


def _signature(reply: Message) -> bytes:
    value = reply.config.get(SIGNATURE, b"")
    if not isinstance(value, bytes):
        raise SecAggViolation(f"the reply's {SIGNATURE!r} is not bytes")
    return value


def _payload(reply: Message, key: str) -> bytes:
    value = reply.config.get(key)
    if not isinstance(value, bytes):
        raise SecAggViolation(f"the reply lacks {key!r} (bytes)")
    return value
