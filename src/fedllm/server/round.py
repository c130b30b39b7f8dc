"""One federated round, readable top to bottom."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedllm.client.fednova import NORM_METRIC, effective_steps
from fedllm.pipeline.stage import Pipeline, RoundReport
from fedllm.runtime.engine import ClientDone, Engine
from fedllm.server.control import ServerControl
from fedllm.server.optimizer import ServerOptimizer
from fedllm.server.state import ServerState
from fedllm.server.validate import all_finite, find_problem, params_problem
from fedllm.types import ClientId, ClientUpdate, Params, RoundRecord
from fedllm.wire import payload_bytes, try_payload_bytes, with_extra


class Expansion(Protocol):
    """Brings compact updates (heterogeneous LoRA ranks) back to the broadcast's shapes."""

    def expand(self, update: ClientUpdate, reference: Params) -> ClientUpdate | str:
        """The update in ``reference``'s shapes, or why it can't be (never raises)."""
        ...

    def coverage(self, update: ClientUpdate) -> Params | None:
        """The entries the expanded update really holds, for the aggregator; None: all."""
        ...


class Participant(Protocol):
    """A party that trains on the server beside the cohort (on public data); its
    update joins the aggregate with a weight set against the clients'."""

    name: str

    def contribute(self, broadcast: Params, round_num: int) -> ClientUpdate:
        """Its update, trained from ``broadcast`` (where its data lies: nothing is sent)."""
        ...

    def weight(self, client_weight: float) -> float:
        """Its aggregation weight, given the accepted clients' total weight."""
        ...


@dataclass(frozen=True)
class RoundExtensions:
    """The optional algorithms a round carries (each off when None or False).

    Attributes:
        control: SCAFFOLD's server control variate.
        fednova: rescale the mean of FedNova-normalised updates.
        expansion: pads heterogeneous-rank LoRA updates to the broadcast's shapes.
        participant: the server's own public-data update, folded in with its weight.
    """

    control: ServerControl | None = None
    fednova: bool = False
    expansion: Expansion | None = None
    participant: Participant | None = None


class Tally:
    """The per-update bookkeeping of a round: bytes, tokens, metrics, accepted and rejected."""

    def __init__(self, record: RoundRecord, counts_bytes: bool = True) -> None:
        self.record = record
        self.counts_bytes = counts_bytes
        self.client_metrics: dict[str, dict[str, float]] = {}
        self.losses: list[float] = []
        self.tokens = 0.0
        self.start = time.perf_counter()

    def receive(self, update: ClientUpdate) -> None:
        """Count an arriving update's bytes and tokens and keep its metrics.

        Tokens count whether or not the update is then accepted: they were trained.
        """
        tokens = update.metrics.get("tokens")
        if isinstance(tokens, int | float) and math.isfinite(tokens) and tokens >= 0:
            self.tokens += tokens
        if self.counts_bytes:
            message = with_extra(update.delta, update.extra) if update.extra else update.delta
            self.record.bytes_up += try_payload_bytes(message) or 0
        self.client_metrics[update.client_id] = dict(update.metrics)

    def reject(self, update: ClientUpdate, reason: str) -> None:
        """Record why an update was refused."""
        self.record.rejected.append({"client": update.client_id, "reason": reason})

    def accept(self, update: ClientUpdate) -> None:
        """Record an update that was folded in."""
        self.record.accepted.append(update.client_id)
        if "train_loss" in update.metrics:
            self.losses.append(update.metrics["train_loss"])

    def close(self) -> None:
        """Write the training time, mean loss, tokens (and tokens/s over the training
        time) and client metrics into the record."""
        train_s = time.perf_counter() - self.start
        self.record.time_s["train"] = train_s
        self.record.extra["tokens"] = int(self.tokens)
        if self.tokens > 0 and train_s > 0:
            self.record.extra["tokens_per_s"] = self.tokens / train_s
        self.record.train_loss = sum(self.losses) / len(self.losses) if self.losses else None
        self.record.extra["client_metrics"] = self.client_metrics


def run_round(
    state: ServerState,
    cohort: Sequence[ClientId],
    engine: Engine,
    pipeline: Pipeline,
    optimizer: ServerOptimizer,
    min_clients: int,
    weighting: str = "examples",
    on_client_done: ClientDone | None = None,
    extensions: RoundExtensions | None = None,
) -> RoundRecord:
    """Broadcast, train the cohort, validate and fold in each update as it arrives,
    then step the server optimizer.

    Updates stream into the aggregator one at a time, so memory holds one
    update, not one per client. Below ``min_clients`` accepted updates (or with
    zero total weight, or a non-finite aggregate) the global model is left as
    it was and the reason is recorded. ``state.round`` advances either way.

    :class:`RoundExtensions` adds the optional algorithms. With ``control``
    (SCAFFOLD) the server control variate goes out with the
    model and the clients' changes to theirs come back beside the deltas; with
    ``fednova`` the mean of the normalised updates is rescaled by the accepted
    clients' effective steps. With ``expansion`` (heterogeneous LoRA ranks) each
    update's bytes are counted as sent, then it is padded to the broadcast's
    shapes before it is validated, and folded in with its coverage. With
    ``participant`` (the server's public-data step), once the cohort is in and
    enough of it was accepted, the participant trains from the broadcast and its
    update is validated and folded in with :meth:`Participant.weight`.
    """
    ext = extensions or RoundExtensions()
    control, fednova, expansion, participant = (
        ext.control,
        ext.fednova,
        ext.expansion,
        ext.participant,
    )
    round_num = state.round + 1
    record = RoundRecord(round=round_num, sampled=list(cohort))
    broadcast = state.params
    extra = control.control if control is not None else {}
    record.bytes_down = payload_bytes(with_extra(broadcast, extra)) * len(cohort)
    tally = Tally(record)
    weights: list[float] = []
    norms: list[float] = []

    pipeline.start(broadcast)
    if control is not None:
        control.start()
    assignments = [(cid, broadcast) for cid in cohort]
    for update in engine.train(assignments, round_num, on_client_done, extra or None):
        tally.receive(update)
        if expansion is not None:
            expanded = expansion.expand(update, broadcast)
            if isinstance(expanded, str):
                tally.reject(update, expanded)
                continue
            update = expanded
        problem = find_problem(update, broadcast) or _algorithm_problem(update, extra, fednova)
        if problem is not None:
            tally.reject(update, problem)
            continue
        weight = float(update.num_examples) if weighting == "examples" else 1.0
        pipeline.add(update, weight, expansion.coverage(update) if expansion else None)
        if control is not None:
            control.add(update.extra)
        weights.append(weight)
        norms.append(update.metrics.get(NORM_METRIC, 1.0))
        tally.accept(update)
    if participant is not None and sum(weights) > 0 and len(record.accepted) >= min_clients:
        add_participant(participant, broadcast, round_num, sum(weights), pipeline, tally)
    tally.close()

    start = time.perf_counter()
    scale = effective_steps(norms, weights) if fednova and sum(weights) > 0 else 1.0
    record.skipped = apply_aggregate(
        state, pipeline, optimizer, record, min_clients, sum(weights), scale
    )
    if control is not None:
        control.finish()
    if fednova:
        record.extra["fednova_tau_eff"] = scale
    pipeline.end_round(
        RoundReport(
            round_num, len(record.accepted), [tally.client_metrics[c] for c in record.accepted]
        )
    )
    record.time_s["aggregate"] = time.perf_counter() - start
    state.round = round_num
    return record


def add_participant(
    participant: Participant,
    broadcast: Params,
    round_num: int,
    client_weight: float,
    pipeline: Pipeline,
    tally: Tally,
) -> None:
    """Train the participant, validate its update and fold it in (no bytes counted);
    its metrics and weight go to ``record.extra[participant.name]``."""
    update = participant.contribute(broadcast, round_num)
    weight = participant.weight(client_weight)
    tally.record.extra[participant.name] = {**update.metrics, "weight": weight}
    problem = find_problem(update, broadcast)
    if problem is not None:
        tally.reject(update, problem)
        return
    pipeline.add(update, weight)


def _algorithm_problem(update: ClientUpdate, extra: Params, fednova: bool) -> str | None:
    """What SCAFFOLD or FedNova need from an update and it lacks, or None."""
    if extra:
        problem = params_problem(update.extra, extra)
        if problem is not None:
            return f"control variate: {problem}"
    if fednova:
        norm = update.metrics.get(NORM_METRIC)
        if not isinstance(norm, float) or not math.isfinite(norm) or norm <= 0:
            return f"FedNova needs a finite step norm {NORM_METRIC} > 0, got {norm!r}"
    return None


def apply_aggregate(
    state: ServerState,
    pipeline: Pipeline,
    optimizer: ServerOptimizer,
    record: RoundRecord,
    min_clients: int,
    total_weight: float,
    scale: float = 1.0,
) -> str | None:
    """Finish the aggregate, scale it, and step the server; return why not, if it can't."""
    if not record.sampled:
        return "empty cohort (no client available this round); global model unchanged"
    if len(record.accepted) < min_clients:
        return (
            f"{len(record.accepted)} accepted update(s) < server.min_clients = {min_clients}; "
            "global model unchanged"
        )
    if total_weight <= 0:
        return "accepted updates carry zero total weight (no examples); global model unchanged"
    combined = pipeline.finish()
    if not all_finite(combined):
        return "the aggregate is not finite (overflow); global model unchanged"
    pseudo_grad = {name: delta * -scale for name, delta in combined.items()}
    optimizer.step(state.params, pseudo_grad, state.optimizer_state)
    return None
