"""One federated round, readable top to bottom."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fedllm.pipeline.stage import Pipeline, RoundReport
from fedllm.runtime.engine import ClientDone, Engine
from fedllm.server.optimizer import ServerOptimizer
from fedllm.server.state import ServerState
from fedllm.server.validate import all_finite, find_problem
from fedllm.types import ClientId, RoundRecord
from fedllm.wire import payload_bytes, try_payload_bytes


def run_round(
    state: ServerState,
    cohort: Sequence[ClientId],
    engine: Engine,
    pipeline: Pipeline,
    optimizer: ServerOptimizer,
    min_clients: int,
    weighting: str = "examples",
    on_client_done: ClientDone | None = None,
) -> RoundRecord:
    """Broadcast, train the cohort, validate and fold in each update as it arrives,
    then step the server optimizer.

    Updates stream into the aggregator one at a time, so memory holds one
    update, not one per client. Below ``min_clients`` accepted updates (or with
    zero total weight, or a non-finite aggregate) the global model is left as
    it was and the reason is recorded. ``state.round`` advances either way.
    """
    round_num = state.round + 1
    record = RoundRecord(round=round_num, sampled=list(cohort))
    broadcast = state.params
    record.bytes_down = payload_bytes(broadcast) * len(cohort)
    client_metrics: dict[str, dict[str, float]] = {}
    losses: list[float] = []
    total_weight = 0.0

    start = time.perf_counter()
    pipeline.start(broadcast)
    for update in engine.train([(cid, broadcast) for cid in cohort], round_num, on_client_done):
        record.bytes_up += try_payload_bytes(update.delta) or 0
        client_metrics[update.client_id] = dict(update.metrics)
        problem = find_problem(update, broadcast)
        if problem is not None:
            record.rejected.append({"client": update.client_id, "reason": problem})
            continue
        weight = float(update.num_examples) if weighting == "examples" else 1.0
        pipeline.add(update, weight)
        total_weight += weight
        record.accepted.append(update.client_id)
        if "train_loss" in update.metrics:
            losses.append(update.metrics["train_loss"])
    record.time_s["train"] = time.perf_counter() - start
    record.train_loss = sum(losses) / len(losses) if losses else None
    record.extra["client_metrics"] = client_metrics

    start = time.perf_counter()
    record.skipped = apply_aggregate(state, pipeline, optimizer, record, min_clients, total_weight)
    pipeline.end_round(
        RoundReport(round_num, len(record.accepted), [client_metrics[c] for c in record.accepted])
    )
    record.time_s["aggregate"] = time.perf_counter() - start
    state.round = round_num
    return record


def apply_aggregate(
    state: ServerState,
    pipeline: Pipeline,
    optimizer: ServerOptimizer,
    record: RoundRecord,
    min_clients: int,
    total_weight: float,
) -> str | None:
    """Finish the aggregate and step the server; return why not, if it can't."""
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
    pseudo_grad = {name: -delta for name, delta in combined.items()}
    optimizer.step(state.params, pseudo_grad, state.optimizer_state)
    return None
