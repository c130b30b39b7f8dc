"""The three ways to spend the same step budget: federated, local-only, centralized.

``federated`` is the product; ``local`` (every client alone on its own data)
and ``centralized`` (all data pooled) are the reference points every
federated result is put beside.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.client.personal import PersonalSplit, PersonalState
from fedllm.client.store import ClientStateStore
from fedllm.client.train import count_local_steps
from fedllm.config import ClientConfig, Config, ServerConfig
from fedllm.data import ClientData
from fedllm.federation.evaluation import evaluate_states
from fedllm.federation.setup import Workspace
from fedllm.pipeline import Pipeline, build_pipeline
from fedllm.pipeline.stage import StageState
from fedllm.runtime.engine import ClientDone
from fedllm.runtime.simulation import SimulationEngine
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.round import run_round
from fedllm.server.sampling import sample_clients
from fedllm.server.state import ServerState
from fedllm.server.validate import find_problem
from fedllm.types import ClientId, Params, RoundRecord

POOLED = "pooled"


class ModeError(ValueError):
    """A federation that cannot train as configured."""


class Mode(Protocol):
    """A way of training, driven round by round by the runner."""

    name: str
    cohort_size: int

    def play_round(self, round_num: int, on_client_done: ClientDone | None) -> RoundRecord:
        """Train one round and say what happened."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current model(s)."""
        ...

    def checkpoint_state(self) -> tuple[dict[str, Params], dict[str, Any]]:
        """Tensor groups and JSON state to save."""
        ...

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        """Continue from a checkpoint."""
        ...

    def final_states(self) -> Iterator[tuple[str, Params]]:
        """States to export, lazily: ``("", global)`` or ``(client, state)`` per client."""
        ...


class FederatedMode:
    """Sample, train, validate, aggregate through the pipeline, step the server."""

    name = "federated"

    def __init__(
        self,
        ws: Workspace,
        clients: dict[ClientId, ClientData],
        client_cfg: ClientConfig,
        server_cfg: ServerConfig,
        pipeline: Pipeline,
        communicates: bool = True,
        personal: PersonalState | None = None,
    ) -> None:
        self.ws = ws
        self.communicates = communicates
        self.clients = clients
        self.server_cfg = server_cfg
        self.pipeline = pipeline
        self.personal = personal
        self.optimizer = build_server_optimizer(server_cfg)
        shared = personal.split.split(ws.initial)[0] if personal else ws.initial
        params = {k: v.clone() for k, v in shared.items()}
        self.state = ServerState(0, params, self.optimizer.initial_state(params))
        self.cohort_size = min(server_cfg.clients_per_round, len(clients))
        self.engine = SimulationEngine(
            ws.model, clients, client_cfg, ws.config.seed, ws.pad_id, pipeline.client, personal
        )

    def play_round(self, round_num: int, on_client_done: ClientDone | None) -> RoundRecord:
        cohort = sample_clients(
            list(self.clients), self.server_cfg.clients_per_round, self.ws.config.seed, round_num
        )
        record = run_round(
            self.state,
            cohort,
            self.engine,
            self.pipeline,
            self.optimizer,
            self.server_cfg.min_clients,
            self.server_cfg.weighting,
            on_client_done,
        )
        if not self.communicates:  # pooled data trains where it lies: nothing is sent
            record.bytes_up = record.bytes_down = 0
        return record

    def evaluate(self) -> dict[str, float]:
        personal = self.personal
        if personal is None:
            return evaluate_states(self.ws, lambda _cid: self.state.params, shared=True)
        global_only = personal.split.merge(self.state.params, personal.initial)
        metrics = evaluate_states(
            self.ws, lambda cid: personal.full_start(cid, self.state.params), shared=False
        )
        baseline = evaluate_states(self.ws, lambda _cid: global_only, shared=True)
        return {**metrics, **{f"global_only/{k}": v for k, v in baseline.items()}}

    def checkpoint_state(self) -> tuple[dict[str, Params], dict[str, Any]]:
        tensors = {"global": self.state.params, "optimizer": self.state.optimizer_state}
        return tensors, {"pipeline": self.pipeline.states}

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        self.state = ServerState(round_num, tensors["global"], tensors.get("optimizer", {}))
        states: dict[str, StageState] = meta.get("pipeline", {})
        self.pipeline.states.update(states)

    def final_states(self) -> Iterator[tuple[str, Params]]:
        if self.personal is None:
            yield "", self.state.params
            return
        yield "", self.personal.split.merge(self.state.params, self.personal.initial)
        for cid in self.clients:  # personalised models, one in memory at a time
            yield cid, self.personal.full_start(cid, self.state.params)


class LocalMode:
    """Each client trains alone from the same start; nothing is shared.

    Client states persist on disk (``clients/`` in the run directory). Each
    client is evaluated with its own model on its own eval split.
    """

    name = "local"

    def __init__(self, ws: Workspace, store: ClientStateStore) -> None:
        assert ws.data is not None
        self.ws = ws
        self.store = store
        self.clients = ws.data.clients
        cfg = ws.config
        self.cohort_size = min(cfg.server.clients_per_round, len(self.clients))
        self.engine = SimulationEngine(
            ws.model, self.clients, cfg.client, cfg.seed, ws.pad_id, lambda u: u
        )

    def state_of(self, client_id: ClientId) -> Params:
        return self.store.get(client_id) or self.ws.initial

    def play_round(self, round_num: int, on_client_done: ClientDone | None) -> RoundRecord:
        cfg = self.ws.config
        cohort = sample_clients(
            list(self.clients), cfg.server.clients_per_round, cfg.seed, round_num
        )
        record = RoundRecord(round=round_num, sampled=cohort)
        client_metrics: dict[str, dict[str, float]] = {}
        losses: list[float] = []
        start_time = time.perf_counter()
        for cid in cohort:
            start = self.state_of(cid)
            (update,) = self.engine.train([(cid, start)], round_num, on_client_done)
            client_metrics[cid] = dict(update.metrics)
            problem = find_problem(update, start)
            if problem is not None:
                record.rejected.append({"client": cid, "reason": problem})
                continue
            with torch.no_grad():
                self.store.put(cid, {k: start[k] + update.delta[k] for k in start})
            record.accepted.append(cid)
            losses.append(update.metrics["train_loss"])
        record.time_s["train"] = time.perf_counter() - start_time
        record.train_loss = sum(losses) / len(losses) if losses else None
        record.extra["client_metrics"] = client_metrics
        return record

    def evaluate(self) -> dict[str, float]:
        return evaluate_states(self.ws, self.state_of, shared=False)

    def checkpoint_state(self) -> tuple[dict[str, Params], dict[str, Any]]:
        return {}, {}

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        pass  # the runner restores the client store from the checkpoint's snapshot

    def final_states(self) -> Iterator[tuple[str, Params]]:
        for cid in self.clients:  # one client's state in memory at a time
            yield cid, self.state_of(cid)


def pooled_client(clients: dict[ClientId, ClientData]) -> ClientData:
    """All clients' training data in one client (client order, then example order)."""
    train = [ex for c in clients.values() for ex in c.train]
    return ClientData(POOLED, train, [])


def centralized_budget(config: Config, clients: dict[ClientId, ClientData]) -> ClientConfig:
    """Local steps per round for the pooled client: what the federation spends per round
    (``clients_per_round`` clients x their local steps)."""
    sizes = [len(c.train) for c in clients.values()]
    per_client = count_local_steps(config.client, round(sum(sizes) / len(sizes)))
    cohort = min(config.server.clients_per_round, len(clients))
    return config.client.model_copy(
        update={"local_steps": per_client * cohort, "local_epochs": 0.0}
    )


def build_mode(ws: Workspace, run_root: Path) -> Mode:
    """The mode named by ``federation.mode``."""
    assert ws.data is not None
    config = ws.config
    available = len(ws.data.clients)
    if config.federation.mode == "federated" and config.server.min_clients > available:
        raise ModeError(
            f"server.min_clients = {config.server.min_clients} but only {available} client(s) "
            f"have data (dropped: {ws.data.dropped or 'none'}); every round would be skipped"
        )
    split = PersonalSplit.from_config(config.personal)
    if split.active and config.federation.mode != "federated":
        raise ModeError(
            f"[personal] applies to federation.mode = 'federated', not "
            f"{config.federation.mode!r}: there is no shared model to personalise"
        )
    if config.federation.mode == "local":
        return LocalMode(ws, ClientStateStore(run_root / "clients"))
    if config.federation.mode == "centralized":
        pooled = {POOLED: pooled_client(ws.data.clients)}
        plain = ServerConfig(
            rounds=config.server.rounds,
            clients_per_round=1,
            min_clients=1,
            optimizer="fedavg",
            lr=1.0,
        )
        no_stages = Pipeline([], WeightedMean())
        budget = centralized_budget(config, ws.data.clients)
        return FederatedMode(ws, pooled, budget, plain, no_stages, communicates=False)
    personal = None
    if split.active:
        split.check(ws.initial)
        store = ClientStateStore(run_root / "clients")
        personal = PersonalState(split, store, split.split(ws.initial)[1])
    return FederatedMode(
        ws,
        dict(ws.data.clients),
        config.client,
        config.server,
        build_pipeline(config),
        personal=personal,
    )
