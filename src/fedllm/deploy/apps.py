"""The Flower components of a fedllm deployment (``[tool.flwr.app.components]``).

``server_app`` runs the configuration's federation over the SuperLink's grid and
writes the usual run directory; ``client_app`` builds the node's client side from
the same configuration and answers for one client. The run config names the
fedllm config file (``config``), the run directory (``out``) and how many nodes
to wait for (``nodes``); a node's config names its client (``partition-id``, an
index into the federation's clients) and its state directory (``state-dir``).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

from fedllm.config import ConfigError, load_config
from fedllm.data import build_federated_data
from fedllm.federation.algorithms.base import ModeError
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare
from fedllm.model.load import load_tokenizer
from fedllm.protocol.engine import ClientHandler
from fedllm.runtime.flower.apps import (
    Grid,
    Settings,
    make_client_app,
    make_server_app,
    node_clients,
)
from fedllm.runtime.flower.engine import flower_engines
from fedllm.runtime.simulation import SimulationEngine
from fedllm.types import ClientId

NODE_WAIT_S = 120.0


def serve(grid: Grid, run_config: Settings) -> None:
    """The federation of ``run_config["config"]``, over ``grid``, into ``run_config["out"]``."""
    config = load_config(str(run_config["config"]))
    nodes = node_clients(grid, int(run_config["nodes"]), NODE_WAIT_S)
    out = Path(str(run_config["out"]))
    engines = flower_engines(grid, nodes, config.server.reply_timeout_s)
    run(config, out, overwrite=True, engine=engines)


def pick_client(clients: Iterable[ClientId], partition: int) -> ClientId:
    """The ``partition``-th client id (sorted), the one node ``partition`` answers for.

    Raises:
        ConfigError: there are not that many clients.
    """
    ids = sorted(clients)
    if not 0 <= partition < len(ids):
        raise ConfigError(
            f"node partition-id = {partition}, but the federation has {len(ids)} clients "
            f"(partition-id 0 to {len(ids) - 1})"
        )
    return ids[partition]


def node_client(node_config: Settings, run_config: Settings) -> ClientId:
    """The node's client id, from the tokenized data alone (no model is loaded)."""
    config = load_config(str(run_config["config"]))
    data = build_federated_data(config.data, load_tokenizer(config.model), config.seed)
    return pick_client(data.clients, int(node_config["partition-id"]))


@cache
def _node(config_path: str, partition: int, state_dir: str) -> tuple[ClientId, ClientHandler]:
    ws = prepare(load_config(config_path))
    assert ws.data is not None
    mode = build_mode(ws, Path(state_dir))
    if not isinstance(mode, FederatedMode) or not isinstance(mode.engine, SimulationEngine):
        raise ModeError(f"federation.mode = {ws.config.federation.mode!r} does not run on Flower")
    return pick_client(ws.data.clients, partition), mode.engine.handler


def node_handler(node_config: Settings, run_config: Settings) -> tuple[ClientId, ClientHandler]:
    """The node's client id and its client side (built once per process)."""
    return _node(
        str(run_config["config"]),
        int(node_config["partition-id"]),
        str(node_config.get("state-dir", "fedllm-node-state")),
    )


server_app = make_server_app(serve)
client_app = make_client_app(node_client, node_handler)
