"""One federated round, readable top to bottom."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fedllm.pipeline.stage import Pipeline, RoundReport
from fedllm.runtime.engine import ClientDone, Engine
from fedllm.server.optimizer import ServerOptimizer
from fedllm.server.state import ServerState
from fedllm.server.validate import split_valid
from fedllm.types import ClientId, ClientUpdate, RoundRecord
from fedllm.wire import payload_bytes


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
    """Broadcast, train the cohort, validate, combine, and step the server optimizer.

    Below ``min_clients`` accepted updates the global model is left as it was
    and the reason is recorded. ``state.round`` advances either way.
    """
    round_num = state.round + 1
    record = RoundRecord(round=round_num, sampled=list(cohort))
    broadcast = state.params
    record.bytes_down = payload_bytes(broadcast) * len(cohort)

    start = time.perf_counter()
    updates = engine.train([(cid, broadcast) for cid in cohort], round_num, on_client_done)
    record.time_s["train"] = time.perf_counter() - start
    record.bytes_up = sum(payload_bytes(u.delta) for u in updates)

    accepted, rejected = split_valid(updates, broadcast)
    record.accepted = [u.client_id for u in accepted]
    record.rejected = [{"client": r.client_id, "reason": r.reason} for r in rejected]
    record.train_loss = mean_train_loss(accepted)
    record.extra["client_metrics"] = {u.client_id: u.metrics for u in updates}

    start = time.perf_counter()
    if len(accepted) < min_clients:
        record.skipped = (
            f"{len(accepted)} accepted update(s) < server.min_clients = {min_clients}; "
            "global model unchanged"
        )
    else:
        weights = [float(u.num_examples) if weighting == "examples" else 1.0 for u in accepted]
        combined = pipeline.combine(accepted, weights)
        pseudo_grad = {name: -delta for name, delta in combined.items()}
        optimizer.step(state.params, pseudo_grad, state.optimizer_state)
    pipeline.end_round(RoundReport(round_num, len(accepted), [u.metrics for u in accepted]))
    record.time_s["aggregate"] = time.perf_counter() - start
    state.round = round_num
    return record


def mean_train_loss(updates: Sequence[ClientUpdate]) -> float | None:
    """Unweighted mean of the clients' reported ``train_loss``."""
    losses = [u.metrics["train_loss"] for u in updates if "train_loss" in u.metrics]
    return sum(losses) / len(losses) if losses else None
