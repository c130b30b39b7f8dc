"""The three ways to spend the same step budget: federated, local-only, centralized.

``federated`` is the product; ``local`` (every client alone on its own data)
and ``centralized`` (all data pooled) are the reference points every
federated result is put beside. Each is the same client side and the same
driver on the simulator; the algorithms come from the registry
(:func:`fedllm.composition.compose`), never by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedllm.aggregate.mean import WeightedMean
from fedllm.client.budget import check_budget_clients, client_steps, with_fixed_steps
from fedllm.client.evaluate import AS_SENT, CLIENT, EVALUATE, GLOBAL
from fedllm.client.settings import ClientConfig
from fedllm.client.side import TRAIN, ClientHalves, ClientSide, no_stages
from fedllm.client.store import ClientStateStore
from fedllm.composition import AlgorithmSetup, Composition, ModeError, compose
from fedllm.config import Config
from fedllm.data import ClientData
from fedllm.data.compact import Examples
from fedllm.federation.evaluation import client_evaluator, evaluate_federation
from fedllm.federation.setup import Workspace
from fedllm.pipeline import Pipeline, build_pipeline
from fedllm.pipeline.stage import StageState
from fedllm.protocol.engine import ClientHandler, ReplyDone, by_phase, transport_times
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.protocol.solo import run_solo_round
from fedllm.runtime.dropout import dropout_plan
from fedllm.runtime.simulation import EngineFactory, SimulationEngine
from fedllm.seeding import privacy_seed
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

    def baseline(self, record: RoundRecord) -> None:
        """Let the plug-ins add to round 0's record (e.g. epsilon 0)."""
        ...

    def charge_replayed(self, rounds: int) -> None:
        """``rounds`` rounds after the last checkpoint had started before a crash and
        will be played again: let the plug-ins charge what they released."""
        ...

    def stop_reason(self) -> str | None:
        """Why the run must stop now, or None."""
        ...

    def transport_times(self) -> dict[str, float]:
        """Seconds a distributed engine spent per phase since last asked ({} in process)."""
        ...

    def summary(self) -> dict[str, Any]:
        """The plug-ins' parts of ``summary.json``, by plug-in name."""
        ...


@dataclass
class Members:
    """Who trains, who is scored, and whose data this process holds.

    Attributes:
        sizes: the training clients -> their training examples (what the sampler
            draws from, in client order).
        data: the training clients' data held here: all of them in the simulator,
            none on a Flower server (the nodes hold it).
        evaluated: the clients scored at evaluation (the real ones, also when
            training is pooled).
    """

    sizes: dict[ClientId, int]
    data: Mapping[ClientId, ClientData]
    evaluated: list[ClientId]

    @classmethod
    def held(cls, clients: Mapping[ClientId, ClientData]) -> Members:
        """Members whose data is all here (the simulator)."""
        sizes = {cid: len(data.train) for cid, data in clients.items()}
        return cls(sizes, clients, list(clients))


class FederatedMode:
    """Sample, train, screen, aggregate through the pipeline, step the server.

    Args:
        ws: the loaded model, data and config.
        members: who trains (the pooled client when centralized) and who is scored.
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
        members: Members,
        client_cfg: ClientConfig,
        server_cfg: ServerConfig,
        pipeline: Pipeline,
        composition: Composition,
        store: ClientStateStore,
        counts_bytes: bool = True,
        engine: EngineFactory = SimulationEngine,
    ) -> None:
        self.ws = ws
        self.members = members
        self.view = composition.view
        self.plugins = composition.server_plugins
        shared = self.view.shared(ws.initial) if self.view else ws.initial
        params = {k: v.clone() for k, v in shared.items()}
        optimizer = build_server_optimizer(server_cfg)
        self.state = ServerState(0, params, optimizer.initial_state(params))
        self.cohort_size = min(server_cfg.clients_per_round, len(members.sizes))
        # cohorts are a privacy draw (amplification by sampling): a secret seed when secure
        sample_seed = privacy_seed(ws.config.seed, secure=ws.config.secure_randomness)
        self.sampler = build_sampler(server_cfg, members.sizes, sample_seed)
        self.pipeline = Pipeline(pipeline.stages, composition.aggregator(pipeline.aggregator))
        self.setup = TrainingSetup(
            self.pipeline,
            optimizer,
            self.plugins,
            server_cfg.min_clients,
            server_cfg.weighting,
            ws.config.seed,
            counts_bytes,
            composition.exchange,
            composition.disclosure,
            composition.public_metrics,
        )
        side = client_side(ws, members.data, client_cfg, composition, store, self.pipeline.client)
        self.side = side
        handler = client_handler(ws, side, composition)
        self.engine = engine(handler, dropout_plan(server_cfg, ws.config.seed))

    @property
    def clients(self) -> Mapping[ClientId, ClientData]:
        """The training clients whose data is held here."""
        return self.members.data

    def play_round(self, round_num: int, on_reply: ReplyDone | None) -> RoundRecord:
        cohort = self.sampler.cohort(round_num)
        record = run_round(self.state, cohort, self.engine, self.setup, on_reply)
        record.extra.update(self.sampler.record_extra(round_num))
        return record

    def evaluate(self) -> dict[str, float]:
        """Every member scores the global model (each its own, with personal parts)."""
        view, params, round_num = self.view, self.state.params, self.state.round
        clients = self.members.evaluated

        def sent(_client: ClientId) -> Params:
            return params

        if view is None:
            return evaluate_federation(
                self.ws, self.engine, clients, round_num, sent, AS_SENT, params
            )
        metrics = evaluate_federation(self.ws, self.engine, clients, round_num, sent, CLIENT, None)
        common = view.global_only(params)
        baseline = evaluate_federation(
            self.ws, self.engine, clients, round_num, sent, GLOBAL, common
        )
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
        for cid in self.members.data:  # per-client models held here, one at a time
            yield cid, self.view.of_client(cid, self.state.params)

    def transport_times(self) -> dict[str, float]:
        return transport_times(self.engine)

    def baseline(self, record: RoundRecord) -> None:
        for plugin in self.plugins:
            plugin.baseline(record)

    def charge_replayed(self, rounds: int) -> None:
        for plugin in self.plugins:
            plugin.charge_replayed(rounds)

    def stop_reason(self) -> str | None:
        for plugin in self.plugins:
            reason = plugin.stop_reason()
            if reason is not None:
                return f"{plugin.name}: {reason}"
        return None

    def summary(self) -> dict[str, Any]:
        parts = {plugin.name: plugin.summary() for plugin in self.plugins}
        return {name: part for name, part in parts.items() if part}


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
        sizes = Members.held(self.clients).sizes
        self.sampler = build_sampler(
            cfg.server, sizes, privacy_seed(cfg.seed, secure=cfg.secure_randomness)
        )
        side = client_side(ws, self.clients, cfg.client, composition, store)
        self.side = side
        handler = client_handler(ws, side, composition)
        self.engine = engine(handler, dropout_plan(cfg.server, cfg.seed))
        self.round = 0

    def state_of(self, client_id: ClientId) -> Params:
        return self.store.get(client_id) or self.ws.initial

    def play_round(self, round_num: int, on_reply: ReplyDone | None) -> RoundRecord:
        self.round = round_num
        cohort = self.sampler.cohort(round_num)
        record = run_solo_round(
            round_num, cohort, self.engine, self.state_of, self.store.put, on_reply
        )
        record.extra.update(self.sampler.record_extra(round_num))
        return record

    def evaluate(self) -> dict[str, float]:
        """Each client scores its own model (sent from the store, one at a time)."""
        clients, round_num = list(self.clients), self.round
        return evaluate_federation(
            self.ws, self.engine, clients, round_num, self.state_of, AS_SENT, None
        )

    def checkpoint_state(self) -> tuple[dict[str, Params], dict[str, Any]]:
        return {}, {}

    def restore(self, round_num: int, tensors: dict[str, Params], meta: dict[str, Any]) -> None:
        self.round = round_num  # the runner restores the client store from its snapshot

    def final_states(self) -> Iterator[tuple[str, Params]]:
        for cid in self.clients:  # one client's state in memory at a time
            yield cid, self.state_of(cid)

    def transport_times(self) -> dict[str, float]:
        return transport_times(self.engine)

    def baseline(self, record: RoundRecord) -> None:
        pass  # nothing is accounted for clients alone

    def charge_replayed(self, rounds: int) -> None:
        pass  # clients alone release nothing to a server

    def stop_reason(self) -> str | None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


def client_side(
    ws: Workspace,
    clients: Mapping[ClientId, ClientData],
    cfg: ClientConfig,
    composition: Composition,
    store: ClientStateStore,
    client_halves: ClientHalves = no_stages,
) -> ClientSide:
    """The training client side of ``clients`` on the workspace's one model, with the
    algorithms' client halves and the pipeline's client stages (every mode's and a
    Flower node's)."""
    return ClientSide(
        clients,
        cfg,
        ws.config.seed,
        ws.pad_id,
        ws.model,
        composition.client_plugins,
        client_halves,
        store,
        composition.disclosure,
    )


def client_handler(ws: Workspace, side: ClientSide, composition: Composition) -> ClientHandler:
    """The client side every engine calls: training, and scoring on held-out data."""
    evaluator = client_evaluator(ws, composition.view)
    phases = {TRAIN: side.handle, EVALUATE: evaluator.handle}
    return by_phase({**phases, **composition.client_phases(side)})


def node_client_side(
    ws: Workspace, run_root: Path, node: Mapping[str, str] | None = None
) -> ClientHandler:
    """The client side alone, for the clients whose data ``ws`` holds (a Flower node's):
    training with the algorithms' client halves and the pipeline's client stages, and
    scoring on held-out data; client state under ``run_root``; ``node``: the node's
    config, for the algorithms that read it (SecAgg+'s ``auth-key``).

    Raises:
        ModeError: ``federation.mode`` is not 'federated' (nothing to serve remotely).
    """
    assert ws.data is not None
    config = ws.config
    if config.federation.mode != "federated":
        raise ModeError(
            f"federation.mode = {config.federation.mode!r} does not run on a distributed "
            "engine; only 'federated' does"
        )
    store = ClientStateStore(run_root / "clients")
    sizes = Members.held(ws.data.clients).sizes
    setup = AlgorithmSetup(ws, "federated", sizes, store, ws.initial, True, dict(node or {}))
    composition = compose(setup)
    pipeline = build_pipeline(config)
    stages = Pipeline(pipeline.stages, composition.aggregator(pipeline.aggregator))
    side = client_side(ws, ws.data.clients, config.client, composition, store, stages.client)
    return client_handler(ws, side, composition)


def pooled_client(clients: dict[ClientId, ClientData]) -> ClientData:
    """All clients' training data in one client (client order, then example order)."""
    return ClientData(POOLED, Examples.concat([c.train for c in clients.values()]), [])


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
    ws: Workspace,
    run_root: Path,
    engine: EngineFactory = SimulationEngine,
    remote: Mapping[ClientId, int] | None = None,
) -> Mode:
    """The mode named by ``federation.mode``, its rounds carried by ``engine``'s engine
    (the embedded simulator by default).

    Args:
        ws: the loaded model and config; its data is every client's in the simulator.
        run_root: the run directory (client state lives under it).
        engine: makes the engine from the in-process client side.
        remote: the clients that live elsewhere (a Flower server's nodes): client id
            -> training examples, as they announced them. Their data is not here, so
            nothing of ``ws.data`` but the test split is used.

    Raises:
        ModeError: too few clients for ``server.min_clients``, or a mode that needs
            every client's data in one place while the clients are remote.
    """
    assert ws.data is not None
    config = ws.config
    mode = config.federation.mode
    if remote is not None and mode != "federated":
        raise ModeError(
            f"federation.mode = {mode!r} needs every client's data or model in one place; "
            "on a distributed engine only 'federated' runs (use the simulator for it)"
        )
    if remote is None:
        members = Members.held(ws.data.clients)
    else:
        members = Members(dict(remote), {}, list(remote))
    available = len(members.sizes)
    if mode == "federated" and config.server.min_clients > available:
        raise ModeError(
            f"server.min_clients = {config.server.min_clients} but only {available} client(s) "
            f"have data (dropped: {ws.data.dropped or 'none'}); every round would be skipped"
        )
    store = ClientStateStore(run_root / "clients")
    if mode == "centralized":
        pooled = {POOLED: pooled_client(ws.data.clients)}
        composition = compose(
            AlgorithmSetup(ws, mode, Members.held(pooled).sizes, store, ws.initial)
        )
        plain = ServerConfig(
            rounds=config.server.rounds,
            clients_per_round=1,
            min_clients=1,
            optimizer="fedavg",
            lr=1.0,
        )
        budget = centralized_budget(config, ws.data.clients)
        no_stages = Pipeline([], WeightedMean())
        trains_pooled = Members(Members.held(pooled).sizes, pooled, list(ws.data.clients))
        # (its name stays "federated": the record format of earlier runs)
        return FederatedMode(
            ws, trains_pooled, budget, plain, no_stages, composition, store, False, engine
        )
    check_budget_clients(config.client, members.sizes)
    composition = compose(AlgorithmSetup(ws, mode, members.sizes, store, ws.initial))
    if mode == "local":
        return LocalMode(ws, store, composition, engine)
    pipeline = build_pipeline(config, len(members.sizes))
    return FederatedMode(
        ws, members, config.client, config.server, pipeline, composition, store, engine=engine
    )
