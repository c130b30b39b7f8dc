"""The bookkeeping of protocols whose server never reads an update (secure aggregation,
homomorphic encryption): a reply's metadata counted like a plain update's, and the
revealed aggregate folded into the pipeline as one update."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedllm.client.flat import unflatten
from fedllm.message import Message
from fedllm.protocol.fedavg import TrainingSetup, add_contributions
from fedllm.protocol.screen import read_update
from fedllm.protocol.tally import Tally
from fedllm.server.plugin import RoundContext
from fedllm.types import ClientId, ClientUpdate


def count_hidden(
    ctx: RoundContext,
    setup: TrainingSetup,
    tally: Tally,
    client_id: ClientId,
    reply: Message,
    weight: float,
) -> None:
    """A client's update went into the hidden aggregate with ``weight``: its metrics and
    example count are recorded, the plug-ins told (with no delta), the weight added."""
    report = read_update(client_id, Message(config=reply.config, metrics=reply.metrics))
    tally.trained(report)
    for plugin in setup.plugins:
        plugin.accept(ctx, report, weight)
    ctx.accepted_weight += weight
    tally.accept(report)


def refuse_hidden(tally: Tally, client_id: ClientId, reply: Message, reason: str) -> None:
    """A client trained but sent no update (or one the protocol refused): record why."""
    report = read_update(client_id, Message(config=reply.config, metrics=reply.metrics))
    tally.trained(report)
    tally.reject(report, reason)


def fold_revealed(
    ctx: RoundContext,
    setup: TrainingSetup,
    tally: Tally,
    name: str,
    total: NDArray[np.floating],
    count: int,
) -> None:
    """Fold the revealed weighted sum ``total`` (flattened like the broadcast) into the
    pipeline as its mean over the round's accepted weight, then the plug-ins' own
    updates."""
    mean = np.asarray(total, dtype=np.float64) / ctx.accepted_weight
    aggregate = ClientUpdate(name, unflatten(mean, ctx.params), count)
    setup.pipeline.add(aggregate, ctx.accepted_weight)
    add_contributions(ctx, setup, tally)
