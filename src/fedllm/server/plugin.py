"""Server plug-ins: an algorithm's server half, as hooks around the round.

The training round (:mod:`fedllm.protocol.fedavg`) calls every plug-in at the
same points, in the order they were composed:

1. :meth:`ServerPlugin.begin_round`: before the broadcast (a warm-up; zero an
   accumulator);
2. :meth:`ServerPlugin.broadcast`: its part of the broadcast (SCAFFOLD's ``c``)
   and config entries;
3. :meth:`ServerPlugin.decode`: each reply before it is validated (pad
   heterogeneous-rank slices; read its own part);
4. :meth:`ServerPlugin.check`: each validated update: why it must be refused, or None;
5. :meth:`ServerPlugin.accept`: each update folded into the aggregate, with its weight;
6. :meth:`ServerPlugin.contribute`: updates of its own once the cohort is in
   (the server's public-data step), with their weights;
7. :meth:`ServerPlugin.process`: the aggregate before the server optimizer
   steps (FedNova's rescaling);
8. :meth:`ServerPlugin.end_round`: after the step, with the round's record.

State between rounds is tensors plus JSON (:meth:`state` / :meth:`restore`),
checkpointed with everything else. :meth:`stop_reason` ends the run (a
spent privacy budget) with the reason recorded; :meth:`summary` adds to
``summary.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedllm.message import Message
from fedllm.types import ClientId, ClientUpdate, Params, RoundRecord


@dataclass
class RoundContext:
    """What a server plug-in knows of the round it acts in.

    Attributes:
        round: the round being played (1-based; 0 never reaches a plug-in).
        cohort: the clients sampled.
        params: the global trainable state (the broadcast; the server optimizer
            changes it in place at the end of the round).
        seed: a seed derived from the run seed and the round.
        record: the round's record (plug-ins may add entries to ``record.extra``).
        accepted_weight: the total weight of the updates folded in so far.
        abort: why the round's protocol could not finish (the model is then left as it
            was), or None.
    """

    round: int
    cohort: list[ClientId]
    params: Params
    seed: int
    record: RoundRecord
    accepted_weight: float = 0.0
    abort: str | None = None


class ServerPlugin:
    """The server half of an algorithm; every hook does nothing unless overridden.

    Attributes:
        name: unique among the composed plug-ins; names its parts of messages and
            its checkpointed state.
    """

    name: str = ""

    def begin_round(self, ctx: RoundContext) -> None:
        """Before the broadcast is built."""

    def broadcast(self, ctx: RoundContext) -> Message:
        """Its part of the broadcast: ``arrays`` (sent as ``<name>/...``) and ``config``
        entries, the same for every client."""
        return Message()

    def decode(self, ctx: RoundContext, update: ClientUpdate) -> ClientUpdate | str:
        """The reply as the rest of the round should see it, or why it is refused.
        Runs before validation: must not raise on malformed input."""
        return update

    def check(self, ctx: RoundContext, update: ClientUpdate) -> str | None:
        """Why a validated update must be refused, or None."""
        return None

    def accept(self, ctx: RoundContext, update: ClientUpdate, weight: float) -> None:
        """``update`` was folded into the aggregate with ``weight``."""

    def contribute(self, ctx: RoundContext) -> Iterable[tuple[ClientUpdate, float]]:
        """Updates of its own, with weights, once the cohort's are in (and enough were
        accepted); they are validated and folded in like a client's."""
        return ()

    def process(self, ctx: RoundContext, aggregate: Params) -> Params:
        """The aggregate, before the server optimizer steps on it."""
        return aggregate

    def end_round(self, ctx: RoundContext) -> None:
        """The round is over (the model stepped, or the round was skipped)."""

    def state(self) -> tuple[Params, dict[str, Any]]:
        """Tensors and JSON to checkpoint (empty: nothing)."""
        return {}, {}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        """Continue from what :meth:`state` returned."""

    def baseline(self, record: RoundRecord) -> None:
        """Add to round 0's record (the model before training), e.g. epsilon 0."""

    def charge_replayed(self, rounds: int) -> None:
        """``rounds`` rounds past the restored checkpoint had started before a crash and
        will be played again (a privacy ledger charges what they may have released)."""

    def stop_reason(self) -> str | None:
        """Why the run must stop after this round, or None to go on."""
        return None

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` should say of it, under its name (empty: nothing)."""
        return {}
