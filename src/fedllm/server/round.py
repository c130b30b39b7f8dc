"""One federated round, readable top to bottom."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
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


class Tally:
    """The per-update bookkeeping of a round: bytes, metrics, accepted and rejected."""

    def __init__(self, record: RoundRecord, counts_bytes: bool = True) -> None:
        self.record = record
        self.counts_bytes = counts_bytes
        self.client_metrics: dict[str, dict[str, float]] = {}
        self.losses: list[float] = []
        self.start = time.perf_counter()

    def receive(self, update: ClientUpdate) -> None:
        """Count an arriving update's bytes and keep its metrics."""
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
        """Write the training time, mean loss and client metrics into the record."""
        self.record.time_s["train"] = time.perf_counter() - self.start
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
    control: ServerControl | None = None,
    fednova: bool = False,
    expansion: Expansion | None = None,
) -> RoundRecord:
    """Broadcast, train the cohort, validate and fold in each update as it arrives,
    then step the server optimizer.

    Updates stream into the aggregator one at a time, so memory holds one
    update, not one per client. Below ``min_clients`` accepted updates (or with
    zero total weight, or a non-finite aggregate) the global model is left as
    it was and the reason is recorded. ``state.round`` advances either way.

    With ``control`` (SCAFFOLD) the server control variate goes out with the
    model and the clients' changes to theirs come back beside the deltas; with
    ``fednova`` the mean of the normalised updates is rescaled by the accepted
    clients' effective steps. With ``expansion`` (heterogeneous LoRA ranks) each
    update's bytes are counted as sent, then it is padded to the broadcast's
    shapes before it is validated, and folded in with its coverage.
    """
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
