"""An algorithm is a client half, a server half, or both, built from the config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeAlias

from fedllm.client.disclosure import Disclosure, strictest
from fedllm.components import active_algorithms

if TYPE_CHECKING:  # an algorithm's declarations are read at config load, without torch
    from fedllm.client.plugin import ClientPlugin
    from fedllm.client.side import ClientSide
    from fedllm.client.store import ClientStateStore
    from fedllm.config import Config
    from fedllm.federation.setup import Workspace
    from fedllm.pipeline.stage import Aggregator, BatchAggregator
    from fedllm.protocol.engine import ClientHandler
    from fedllm.protocol.fedavg import Exchange
    from fedllm.server.plugin import ServerPlugin
    from fedllm.types import ClientId, Params

AnyAggregator: TypeAlias = "Aggregator | BatchAggregator"


class ModeError(ValueError):
    """A federation that cannot train as configured."""


class ModelView(Protocol):
    """Which part of the trainable state the server holds, and each client's whole model
    (personal parameters make them differ)."""

    def shared(self, full: Params) -> Params:
        """The part of a full state the server aggregates and broadcasts."""
        ...

    def global_only(self, shared: Params) -> Params:
        """The full model without any client's own parts (their initial values)."""
        ...

    def of_client(self, client_id: ClientId, shared: Params) -> Params:
        """``client_id``'s full model, given the shared part."""
        ...


@dataclass
class AlgorithmSetup:
    """What a factory may build from.

    Attributes:
        ws: the loaded model, data and config.
        mode: the federation mode being built (``federated``, ``local``, ``centralized``).
        clients: the clients that train in this mode (the pooled one when centralized)
            -> their training examples; their data may live elsewhere (Flower nodes).
        store: the run's per-client state (plug-ins use a slot named after them).
        shared: the exchanged state before training (what earlier algorithms with a
            :class:`ModelView` leave shared).
        partial: ``clients`` are only those whose data this process holds (a Flower
            node's own): checks against the whole federation are the server's.
        node: on a Flower node, its node config (``--node-config``: e.g. ``auth-key``,
            the node's authentication key that SecAgg+ signs with); empty elsewhere.
    """

    ws: Workspace
    mode: str
    clients: Mapping[ClientId, int]
    store: ClientStateStore
    shared: Params
    partial: bool = False
    node: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Algorithm:
    """What one algorithm adds to a run.

    Attributes:
        name: for messages and errors.
        client: its client half, or None.
        server: its server half, or None.
        aggregator: replaces the configured aggregator (given it), or None.
        view: a split of the state into shared and per-client parts, or None.
        exchange: the round protocol's phases on the server, replacing the one
            ``train`` phase, or None.
        client_phases: the client's handlers of that protocol's phases, given the
            client side that trains, or None.
        disclosure: what clients' replies may say of their training under it, and what
            the run keeps (:mod:`fedllm.client.disclosure`).
        public_metrics: reply metrics its client phases add that are no function of
            the data (seconds, bytes on the wire): the record keeps them.
    """

    name: str
    client: ClientPlugin | None = None
    server: ServerPlugin | None = None
    aggregator: Callable[[AnyAggregator], AnyAggregator] | None = None
    view: ModelView | None = None
    exchange: Exchange | None = None
    client_phases: Callable[[ClientSide], Mapping[str, ClientHandler]] | None = None
    disclosure: Disclosure = "all"
    public_metrics: frozenset[str] = frozenset()


class AlgorithmFactory(Protocol):
    """A registered algorithm: declares what it needs, builds itself when the config
    turns it on.

    What it declares is checked once over the whole composition when the config
    loads (:func:`fedllm.components.composition_problems`). Optional attributes
    (read with defaults): ``opt_in`` (built only when ``federation.algorithms``
    names it: an algorithm without a config section of its own, e.g. one a user
    registers), ``modes`` and ``modes_why`` (the federation modes it applies to,
    default all), ``refuses(config)`` (``(other algorithm, why)`` pairs it cannot
    run with), ``problem(config)`` (a check of its own settings), ``guarantee(config)``
    (what it promises and against whom, for the start banner's privacy line),
    ``train_records(config)`` (a :data:`fedllm.data.build.TrainTransform` the run's
    data build applies to the clients' training records before tokenizing: a simulated
    data attack's poisoning; see :func:`fedllm.federation.early.train_transform`).

    Attributes:
        order: where its hooks run among the others (lower first).
    """

    order: int

    def setting(self, config: Config) -> str | None:
        """The settings that turn it on, as an error message would name them; None: off."""
        ...

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        """The algorithm for this run, or None when the config leaves it off."""
        ...


@dataclass
class Composition:
    """Every algorithm a run uses, in hook order."""

    algorithms: list[Algorithm] = field(default_factory=list)

    @property
    def client_plugins(self) -> list[ClientPlugin]:
        return [a.client for a in self.algorithms if a.client is not None]

    @property
    def server_plugins(self) -> list[ServerPlugin]:
        return [a.server for a in self.algorithms if a.server is not None]

    @property
    def view(self) -> ModelView | None:
        views = [a.view for a in self.algorithms if a.view is not None]
        if len(views) > 1:
            raise ValueError("only one algorithm may split the model into shared and own parts")
        return views[0] if views else None

    @property
    def exchange(self) -> Exchange | None:
        """The round protocol of the one algorithm that brings its own, or None."""
        exchanges = [a.exchange for a in self.algorithms if a.exchange is not None]
        if len(exchanges) > 1:
            raise ValueError("only one algorithm may bring its own round protocol")
        return exchanges[0] if exchanges else None

    def client_phases(self, side: ClientSide) -> dict[str, ClientHandler]:
        """Every algorithm's client phase handlers, by phase name."""
        handlers: dict[str, ClientHandler] = {}
        for algorithm in self.algorithms:
            if algorithm.client_phases is not None:
                handlers.update(algorithm.client_phases(side))
        return handlers

    @property
    def disclosure(self) -> Disclosure:
        """The strictest disclosure any algorithm asks for."""
        return strictest(a.disclosure for a in self.algorithms)

    @property
    def public_metrics(self) -> frozenset[str]:
        """The reply metrics the algorithms and their client plug-ins declare public."""
        plugins = (p.public_metrics for p in self.client_plugins)
        return frozenset().union(*plugins, *(a.public_metrics for a in self.algorithms))

    def aggregator(self, configured: AnyAggregator) -> AnyAggregator:
        """The aggregator after every algorithm that replaces it."""
        for algorithm in self.algorithms:
            if algorithm.aggregator is not None:
                configured = algorithm.aggregator(configured)
        return configured

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.algorithms]


def compose(setup: AlgorithmSetup) -> Composition:
    """Build every registered algorithm the config turns on, in their order.

    Only those whose ``setting`` is on are built, so an algorithm the run does not use
    never imports its halves (nor their dependencies: dp-accounting, cryptography).
    """
    factories: list[AlgorithmFactory] = [f for _, f in active_algorithms(setup.ws.config)]
    built: list[Algorithm] = []
    for factory in factories:  # in hook order
        algorithm = factory.build(setup)
        if algorithm is None:
            continue
        built.append(algorithm)
        if algorithm.view is not None:  # later algorithms see only the shared part
            setup = replace(setup, shared=algorithm.view.shared(setup.shared))
    return Composition(built)
