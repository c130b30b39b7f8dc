"""The three ways to spend the same step budget: federated, local-only, centralized.

``federated`` is the product; ``local`` (every client alone on its own data)
and ``centralized`` (all data pooled) are the reference points every
federated result is put beside.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from fedllm.aggregate.coverage import CoverageMean
from fedllm.aggregate.mean import WeightedMean
from fedllm.client.budget import check_budget_clients, client_steps, with_fixed_steps
from fedllm.client.mix import PublicMix
from fedllm.client.personal import PersonalSplit, PersonalState
from fedllm.client.rank import RankPlan, check_rank_clients
from fedllm.client.scaffold import ControlVariates
from fedllm.client.side import ClientSide
from fedllm.client.store import CONTROL_SUFFIX, OPTIMIZER_SUFFIX, ClientStateStore
from fedllm.config import ClientConfig, Config, ServerConfig
from fedllm.data import ClientData
from fedllm.federation.evaluation import evaluate_states
from fedllm.federation.public import PublicServer, public_mix
from fedllm.federation.setup import Workspace
from fedllm.pipeline import Pipeline, build_pipeline
from fedllm.pipeline.stage import StageState
from fedllm.runtime.engine import ClientDone
from fedllm.runtime.simulation import SimulationEngine
from fedllm.server.control import ServerControl
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.rank import RankExpansion
from fedllm.server.round import RoundExtensions, Tally, run_round
from fedllm.server.sampling import build_sampler
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
    """Sample, train, validate, aggregate through the pipeline, step the server.

    With a public corpus the server warms the global model up on it before round
    1 (once: a resumed run starts past it), trains on it beside each cohort (its
    update a weighted participant), and clients may mix it into their batches.
    """

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
        controls: ControlVariates | None = None,
        ranks: RankPlan | None = None,
        public: PublicServer | None = None,
        mix: PublicMix | None = None,
        optimizer_states: ClientStateStore | None = None,
    ) -> None:
        self.ws = ws
        self.public = public
        self.participant = public.participant() if public is not None else None
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
        sizes = {cid: len(data.train) for cid, data in clients.items()}
        self.sampler = build_sampler(server_cfg, sizes, ws.config.seed)
        self.control = ServerControl(params, len(clients)) if controls is not None else None
        self.fednova = server_cfg.normalize == "fednova"
        self.expansion = None
        if ranks is not None:
            per_rank = ranks.cfg.rank_aggregation == "per_rank"
            self.expansion = RankExpansion(ranks, per_rank)
        side = ClientSide(
            clients,
            client_cfg,
            ws.config.seed,
            ws.pad_id,
            pipeline.client,
            personal=personal,
            controls=controls,
            fednova=self.fednova,
            ranks=ranks,
            public=mix,
            optimizer_states=optimizer_states,
        )
        self.engine = SimulationEngine(ws.model, side)

    def play_round(self, round_num: int, on_client_done: ClientDone | None) -> RoundRecord:
        warmup = None
        if self.public is not None and self.state.round == 0 and self.public.warms_up:
            warmup = self.public.warm_up(self.state.params)  # round 0's training
        cohort = self.sampler.cohort(round_num)
        record = run_round(
            self.state,
            cohort,
            self.engine,
            self.pipeline,
            self.optimizer,
            self.server_cfg.min_clients,
            self.server_cfg.weighting,
            on_client_done,
            RoundExtensions(self.control, self.fednova, self.expansion, self.participant),
        )
        if warmup is not None:
            record.extra["public_warmup"] = warmup
        record.extra.update(self.sampler.record_extra(round_num))
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
        if self.control is not None:
            tensors["control"] = self.control.control
        return tensors, {"pipeline": self.pipeline.states}

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        self.state = ServerState(round_num, tensors["global"], tensors.get("optimizer", {}))
        if self.control is not None:
            self.control.control = tensors["control"]
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

    def __init__(
        self,
        ws: Workspace,
        store: ClientStateStore,
        optimizer_states: ClientStateStore | None = None,
    ) -> None:
        assert ws.data is not None
        self.ws = ws
        self.store = store
        self.clients = ws.data.clients
        cfg = ws.config
        self.cohort_size = min(cfg.server.clients_per_round, len(self.clients))
        sizes = {cid: len(data.train) for cid, data in self.clients.items()}
        self.sampler = build_sampler(cfg.server, sizes, cfg.seed)
        mix = public_mix(cfg, ws.public)
        side = ClientSide(
            self.clients,
            cfg.client,
            cfg.seed,
            ws.pad_id,
            lambda u: u,
            public=mix,
            optimizer_states=optimizer_states,
        )
        self.engine = SimulationEngine(ws.model, side)

    def state_of(self, client_id: ClientId) -> Params:
        return self.store.get(client_id) or self.ws.initial

    def play_round(self, round_num: int, on_client_done: ClientDone | None) -> RoundRecord:
        cohort = self.sampler.cohort(round_num)
        record = RoundRecord(round=round_num, sampled=cohort)
        record.extra.update(self.sampler.record_extra(round_num))
        tally = Tally(record, counts_bytes=False)  # nothing leaves a client training alone
        for cid in cohort:
            start = self.state_of(cid)
            (update,) = self.engine.train([(cid, start)], round_num, on_client_done)
            tally.receive(update)
            problem = find_problem(update, start)
            if problem is not None:
                tally.reject(update, problem)
                continue
            with torch.no_grad():
                self.store.put(cid, {k: start[k] + update.delta[k] for k in start})
            tally.accept(update)
        tally.close()
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
    per_client = [
        client_steps(config.client, cid, len(c.train), config.seed) for cid, c in clients.items()
    ]
    cohort = min(config.server.clients_per_round, len(clients))
    steps = max(1, round(sum(per_client) / len(per_client) * cohort))
    return with_fixed_steps(config.client, steps)


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
    optimizer_states = None
    if config.client.keep_optimizer_state:
        optimizer_states = ClientStateStore(run_root / "clients", OPTIMIZER_SUFFIX)
    if config.federation.mode == "local":
        check_budget_clients(config.client, ws.data.clients)
        return LocalMode(ws, ClientStateStore(run_root / "clients"), optimizer_states)
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
        return FederatedMode(
            ws,
            pooled,
            budget,
            plain,
            no_stages,
            communicates=False,
            public=public_server(ws),
            mix=public_mix(config, ws.public),
            optimizer_states=optimizer_states,
        )
    check_budget_clients(config.client, ws.data.clients)
    personal = None
    if split.active:
        split.check(ws.initial)
        store = ClientStateStore(run_root / "clients")
        personal = PersonalState(split, store, split.split(ws.initial)[1])
    controls = None
    if config.client.drift_correction == "scaffold":
        shared = split.split(ws.initial)[0]
        controls = ControlVariates(ClientStateStore(run_root / "clients", CONTROL_SUFFIX), shared)
    pipeline = build_pipeline(config)
    ranks = None
    if config.method.heterogeneous_ranks:
        check_rank_clients(config.method, ws.data.clients)
        ranks = RankPlan(config.method, config.seed)
        if config.method.rank_aggregation == "per_rank":  # each component over its holders
            pipeline = Pipeline(pipeline.stages, CoverageMean())
    return FederatedMode(
        ws,
        dict(ws.data.clients),
        config.client,
        config.server,
        pipeline,
        personal=personal,
        controls=controls,
        ranks=ranks,
        public=public_server(ws),
        mix=public_mix(config, ws.public),
        optimizer_states=optimizer_states,
    )


def public_server(ws: Workspace) -> PublicServer | None:
    """The server's public-data training, when ``[public]`` asks for a warm-up or steps."""
    cfg = ws.config.public
    if ws.public is None or (cfg.warmup_steps == 0 and cfg.server_steps == 0):
        return None
    return PublicServer(ws.model, ws.public, ws.config, ws.pad_id)
