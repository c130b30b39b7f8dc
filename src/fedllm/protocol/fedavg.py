"""The training round, readable top to bottom: broadcast, train, screen and fold each
reply as it arrives, aggregate, step the server. Every algorithm is a plug-in."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedllm.client.disclosure import Disclosure
from fedllm.client.side import TRAIN
from fedllm.message import ROUND, Dropped, Message, Reply
from fedllm.pipeline.stage import Pipeline, RoundReport
from fedllm.protocol.driver import Phase, run_phases
from fedllm.protocol.engine import Engine, ReplyDone
from fedllm.protocol.screen import read_update, screen
from fedllm.protocol.tally import Tally
from fedllm.seeding import derive_seed
from fedllm.server.optimizer import ServerOptimizer
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.server.state import ServerState
from fedllm.server.validate import all_finite, find_problem
from fedllm.types import ClientId, Params, RoundRecord, join_parts


@dataclass
class TrainingSetup:
    """What every training round is made of.

    Attributes:
        pipeline: the aggregation stages around the aggregator.
        optimizer: the server optimizer (steps on the pseudo-gradient).
        plugins: the algorithms' server halves, in order.
        min_clients: accepted updates below which the model is left unchanged.
        weighting: ``"examples"`` (by training-set size) or ``"uniform"``.
        seed: the run seed (each round's seed derives from it).
        counts_bytes: False where nothing crosses a network (pooled data).
        exchange: the round's phases (one ``train`` phase unless an algorithm brings
            its own protocol, e.g. secure aggregation).
        disclosure: what of the clients' metrics the round's record may keep
            (:mod:`fedllm.client.disclosure`).
        public_metrics: the plug-ins' public reply metrics (kept under every disclosure).
    """

    pipeline: Pipeline
    optimizer: ServerOptimizer
    plugins: Sequence[ServerPlugin] = ()
    min_clients: int = 1
    weighting: str = "examples"
    seed: int = 0
    counts_bytes: bool = True
    exchange: Exchange | None = None
    disclosure: Disclosure = "all"
    public_metrics: frozenset[str] = frozenset()


Exchange = Callable[[RoundContext, "TrainingSetup", Tally], Sequence[Phase]]
"""The phases of one training round, given its context, setup and tally."""


def plain_exchange(ctx: RoundContext, setup: TrainingSetup, tally: Tally) -> list[Phase]:
    """FedAvg's one ``train`` phase."""
    return [TrainPhase(ctx, setup, tally)]


class TrainPhase:
    """The ``train`` exchange: one broadcast to the cohort, each reply screened and
    folded into the aggregate as it arrives (memory holds one update, not one per
    client); then the plug-ins' own contributions."""

    name = TRAIN

    def __init__(self, ctx: RoundContext, setup: TrainingSetup, tally: Tally) -> None:
        self.ctx = ctx
        self.setup = setup
        self.tally = tally

    def messages(self) -> Mapping[ClientId, Message]:
        setup, ctx = self.setup, self.ctx
        parts: dict[str, Params] = {}
        config = {ROUND: ctx.round, **setup.pipeline.broadcast_config()}
        for plugin in setup.plugins:
            part = plugin.broadcast(ctx)
            if part.arrays:
                parts[plugin.name] = part.arrays
            config.update(part.config)
        broadcast = Message(arrays=join_parts(ctx.params, parts), config=config)
        setup.pipeline.start(ctx.params)
        return dict.fromkeys(ctx.cohort, broadcast)

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        if isinstance(reply, Dropped):
            return
        update = read_update(client_id, reply)
        self.tally.trained(update)
        screened = screen(update, self.ctx.params, self.setup.plugins, self.ctx)
        if isinstance(screened, str):
            self.tally.reject(update, screened)
            return
        weight = float(screened.num_examples) if self.setup.weighting == "examples" else 1.0
        self.setup.pipeline.add(screened, weight, screened.coverage)
        for plugin in self.setup.plugins:
            plugin.accept(self.ctx, screened, weight)
        self.ctx.accepted_weight += weight
        self.tally.accept(screened)

    def finish(self) -> None:
        add_contributions(self.ctx, self.setup, self.tally)
        self.tally.close()


def add_contributions(ctx: RoundContext, setup: TrainingSetup, tally: Tally) -> None:
    """Fold in the plug-ins' own updates, once the cohort's are in and enough were
    accepted."""
    if ctx.accepted_weight > 0 and len(ctx.record.accepted) >= setup.min_clients:
        for plugin in setup.plugins:
            for update, weight in plugin.contribute(ctx):
                problem = find_problem(update, ctx.params)
                if problem is not None:
                    tally.reject(update, problem)
                else:
                    setup.pipeline.add(update, weight)


def run_round(
    state: ServerState,
    cohort: Sequence[ClientId],
    engine: Engine,
    setup: TrainingSetup,
    on_reply: ReplyDone | None = None,
) -> RoundRecord:
    """Play one training round on ``engine`` and step the server.

    Below ``setup.min_clients`` accepted updates (or with zero total weight, or a
    non-finite aggregate) the global model is left as it was and the reason is
    recorded. ``state.round`` advances either way.
    """
    round_num = state.round + 1
    record = RoundRecord(round=round_num, sampled=list(cohort))
    seed = derive_seed(setup.seed, "server-round", round_num)
    ctx = RoundContext(round_num, list(cohort), state.params, seed, record)
    for plugin in setup.plugins:
        plugin.begin_round(ctx)
    tally = Tally(record, setup.counts_bytes, setup.disclosure, setup.public_metrics)
    exchange = setup.exchange or plain_exchange
    run_phases(exchange(ctx, setup, tally), engine, tally, on_reply)

    start = time.perf_counter()
    record.skipped = apply_aggregate(state, ctx, setup)
    ended = time.perf_counter()
    for plugin in setup.plugins:
        plugin.end_round(ctx)
    # the plug-ins' end of round (e.g. a measurement of the stepped model) is not aggregation
    record.time_s["end_round"] = time.perf_counter() - ended
    accepted = [tally.client_metrics[c] for c in record.accepted]
    report = RoundReport(round_num, len(accepted), accepted, ctx.accepted_weight, seed)
    setup.pipeline.end_round(report)
    moved = setup.pipeline.estimates()
    if moved:  # an adaptive parameter: its value for the next round, in the record
        record.extra["estimates"] = moved
    record.time_s["aggregate"] = time.perf_counter() - start - record.time_s["end_round"]
    state.round = round_num
    return record


def apply_aggregate(state: ServerState, ctx: RoundContext, setup: TrainingSetup) -> str | None:
    """Finish the aggregate, let the plug-ins process it, and step the server; return
    why not, if it can't."""
    record = ctx.record
    if ctx.abort is not None:
        return f"{ctx.abort}; global model unchanged"
    if not record.sampled:
        return "empty cohort (no client available this round); global model unchanged"
    if len(record.accepted) < setup.min_clients:
        return (
            f"{len(record.accepted)} accepted update(s) < server.min_clients = "
            f"{setup.min_clients}; global model unchanged"
        )
    if ctx.accepted_weight <= 0:
        return "accepted updates carry zero total weight (no examples); global model unchanged"
    report = RoundReport(ctx.round, len(record.accepted), [], ctx.accepted_weight, ctx.seed)
    combined = setup.pipeline.finish(report)
    if setup.pipeline.excluded:
        record.extra["excluded"] = list(setup.pipeline.excluded)
    if not all_finite(combined):
        return "the aggregate is not finite (overflow); global model unchanged"
    for plugin in setup.plugins:
        combined = plugin.process(ctx, combined)
    pseudo_grad = {name: delta * -1.0 for name, delta in combined.items()}
    setup.optimizer.step(state.params, pseudo_grad, state.optimizer_state)
    return None
