"""The three ways to spend the same step budget: federated, local-only, centralized.

``federated`` is the product; ``local`` (every client alone on its own data)
and ``centralized`` (all data pooled) are the reference points every
federated result is put beside. Each is the same client side and the same
driver on the simulator; the algorithms come from the registry
(:func:`fedllm.federation.algorithms.compose`), never by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from fedllm.aggregate.mean import WeightedMean
from fedllm.client.budget import check_budget_clients, client_steps, with_fixed_steps
from fedllm.client.settings import ClientConfig
from fedllm.client.side import ClientSide
from fedllm.client.store import ClientStateStore
from fedllm.config import Config
from fedllm.data import ClientData
from fedllm.federation.algorithms.base import AlgorithmSetup, Composition, ModeError, compose
from fedllm.federation.evaluation import evaluate_states
from fedllm.federation.setup import Workspace
from fedllm.pipeline import Pipeline, build_pipeline
from fedllm.pipeline.stage import StageState
from fedllm.protocol.engine import ReplyDone
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.protocol.solo import run_solo_round
from fedllm.runtime.dropout import dropout_plan
from fedllm.runtime.simulation import EngineFactory, SimulationEngine
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.sampling import build_sampler
from fedllm.server.settings import ServerConfig
from fedllm.server.state import ServerState
from fedllm.types import ClientId, Params, RoundRecord

POOLED = "pooled"


class Mode(Protocol):
    """A way of training, driven round by round by the runner."""

    name: str
    cohort_size: int

    def play_round(self, round_num: int, on_reply: ReplyDone | None) -> RoundRecord:
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

    def stop_reason(self) -> str | None:
        """Why the run must stop now, or None."""
        ...


class FederatedMode:
    """Sample, train, screen, aggregate through the pipeline, step the server.

    Args:
        ws: the loaded model, data and config.
        clients: the clients that train (the pooled one when centralized).
        client_cfg: local training settings.
        server_cfg: rounds, sampling, aggregation and the server optimizer.
        pipeline: the aggregation stages and the configured aggregator.
        composition: the algorithms (client and server plug-ins).
        store: per-client state of the plug-ins.
        counts_bytes: False for pooled data, which trains where it lies.
    """

    name = "federated"

    def __init__(
        self,
        ws: Workspace,
        clients: dict[ClientId, ClientData],
        client_cfg: ClientConfig,
        server_cfg: ServerConfig,
        pipeline: Pipeline,
        composition: Composition,
        store: ClientStateStore,
        counts_bytes: bool = True,
        engine: EngineFactory = SimulationEngine,
    ) -> None:
        self.ws = ws
        self.clients = clients
        self.view = composition.view
        self.plugins = composition.server_plugins
        shared = self.view.shared(ws.initial) if self.view else ws.initial
        params = {k: v.clone() for k, v in shared.items()}
        optimizer = build_server_optimizer(server_cfg)
        self.state = ServerState(0, params, optimizer.initial_state(params))
        self.cohort_size = min(server_cfg.clients_per_round, len(clients))
        sizes = {cid: len(data.train) for cid, data in clients.items()}
        self.sampler = build_sampler(server_cfg, sizes, ws.config.seed)
        self.pipeline = Pipeline(pipeline.stages, composition.aggregator(pipeline.aggregator))
        self.setup = TrainingSetup(
            self.pipeline,
            optimizer,
            self.plugins,
            server_cfg.min_clients,
            server_cfg.weighting,
            ws.config.seed,
            counts_bytes,
        )
        side = ClientSide(
            clients,
            client_cfg,
            ws.config.seed,
            ws.pad_id,
            ws.model,
            composition.client_plugins,
            self.pipeline.client,
            store,
        )
        self.engine = engine(side.handle, dropout_plan(server_cfg, ws.config.seed))

    def play_round(self, round_num: int, on_reply: ReplyDone | None) -> RoundRecord:
        cohort = self.sampler.cohort(round_num)
        record = run_round(self.state, cohort, self.engine, self.setup, on_reply)
        record.extra.update(self.sampler.record_extra(round_num))
        return record

    def evaluate(self) -> dict[str, float]:
        view, params = self.view, self.state.params
        if view is None:
            return evaluate_states(self.ws, lambda _cid: params, shared=True)
        global_only = view.global_only(params)
        metrics = evaluate_states(self.ws, lambda cid: view.of_client(cid, params), shared=False)
        baseline = evaluate_states(self.ws, lambda _cid: global_only, shared=True)
        return {**metrics, **{f"global_only/{k}": v for k, v in baseline.items()}}

    def checkpoint_state(self) -> tuple[dict[str, Params], dict[str, Any]]:
        tensors = {"global": self.state.params, "optimizer": self.state.optimizer_state}
        meta: dict[str, Any] = {"pipeline": self.pipeline.states, "plugins": {}}
        for plugin in self.plugins:
            own, json_state = plugin.state()
            if own:
                tensors[plugin.name] = own
            if json_state:
                meta["plugins"][plugin.name] = json_state
        return tensors, meta

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        self.state = ServerState(round_num, tensors["global"], tensors.get("optimizer", {}))
        for plugin in self.plugins:
            plugin.restore(
                tensors.get(plugin.name, {}), meta.get("plugins", {}).get(plugin.name, {})
            )
        states: dict[str, StageState] = meta.get("pipeline", {})
        self.pipeline.states.update(states)

    def final_states(self) -> Iterator[tuple[str, Params]]:
        if self.view is None:
            yield "", self.state.params
            return
        yield "", self.view.global_only(self.state.params)
        for cid in self.clients:  # per-client models, one in memory at a time
            yield cid, self.view.of_client(cid, self.state.params)

    def stop_reason(self) -> str | None:
        for plugin in self.plugins:
            reason = plugin.stop_reason()
            if reason is not None:
                return f"{plugin.name}: {reason}"
        return None


class LocalMode:
    """Each client trains alone from the same start; nothing is shared.

    Client models persist on disk (``clients/`` in the run directory). Each
    client is evaluated with its own model on its own eval split.
    """

    name = "local"

    def __init__(
        self,
        ws: Workspace,
        store: ClientStateStore,
        composition: Composition,
        engine: EngineFactory = SimulationEngine,
    ) -> None:
        assert ws.data is not None
        self.ws = ws
        self.store = store
        self.clients = ws.data.clients
        cfg = ws.config
        self.cohort_size = min(cfg.server.clients_per_round, len(self.clients))
        sizes = {cid: len(data.train) for cid, data in self.clients.items()}
        self.sampler = build_sampler(cfg.server, sizes, cfg.seed)
        side = ClientSide(
            self.clients,
            cfg.client,
            cfg.seed,
            ws.pad_id,
            ws.model,
            composition.client_plugins,
            store=store,
        )
        self.engine = engine(side.handle, dropout_plan(cfg.server, cfg.seed))

    def state_of(self, client_id: ClientId) -> Params:
        return self.store.get(client_id) or self.ws.initial

    def play_round(self, round_num: int, on_reply: ReplyDone | None) -> RoundRecord:
        cohort = self.sampler.cohort(round_num)
        record = run_solo_round(
            round_num, cohort, self.engine, self.state_of, self.store.put, on_reply
        )
        record.extra.update(self.sampler.record_extra(round_num))
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

    def stop_reason(self) -> str | None:
        return None


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


def build_mode(
    ws: Workspace, run_root: Path, engine: EngineFactory = SimulationEngine
) -> Mode:
    """The mode named by ``federation.mode``, its rounds carried by ``engine``'s engine
    (the embedded simulator by default)."""
    assert ws.data is not None
    config = ws.config
    mode = config.federation.mode
    available = len(ws.data.clients)
    if mode == "federated" and config.server.min_clients > available:
        raise ModeError(
            f"server.min_clients = {config.server.min_clients} but only {available} client(s) "
            f"have data (dropped: {ws.data.dropped or 'none'}); every round would be skipped"
        )
    store = ClientStateStore(run_root / "clients")
    if mode == "centralized":
        pooled = {POOLED: pooled_client(ws.data.clients)}
        composition = compose(AlgorithmSetup(ws, mode, pooled, store, ws.initial))
        plain = ServerConfig(
            rounds=config.server.rounds,
            clients_per_round=1,
            min_clients=1,
            optimizer="fedavg",
            lr=1.0,
        )
        budget = centralized_budget(config, ws.data.clients)
        no_stages = Pipeline([], WeightedMean())
        # (its name stays "federated": the record format of earlier runs)
        return FederatedMode(
            ws, pooled, budget, plain, no_stages, composition, store, False, engine
        )
    check_budget_clients(config.client, ws.data.clients)
    clients = dict(ws.data.clients)
    composition = compose(AlgorithmSetup(ws, mode, clients, store, ws.initial))
    if mode == "local":
        return LocalMode(ws, store, composition, engine)
    pipeline = build_pipeline(config)
    return FederatedMode(
        ws, clients, config.client, config.server, pipeline, composition, store, engine=engine
    )
