"""The Flower components of a fedllm deployment (``[tool.flwr.app.components]``).

``server_app`` runs the configuration's federation over the SuperLink's grid and
writes the usual run directory; ``client_app`` builds the node's client side from
the same configuration and answers for one client. The run config names the
fedllm config file (``config``), the run directory (``out``) and how many nodes
to wait for (``nodes``). A node's config says whose data it holds: either
``partition-id`` (an index into the clients the configuration builds from its
corpus, for trying it out) or ``data`` (the organisation's own ``.jsonl``/``.txt``
file, with an optional ``client`` name); and where its client state lives
(``state-dir``, kept across node restarts). The server learns each node's client
id and training-set size, never its path or text: evaluation is federated too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from fedllm.config import Config, ConfigError, load_config
from fedllm.data import FederatedData, build_federated_data
from fedllm.data.build import build_own_client
from fedllm.data.public import build_public_data
from fedllm.federation.modes import node_client_side
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
from fedllm.types import ClientId

NODE_WAIT_S = 120.0
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A client name a node may give (it names files in the node's state folder)."""


def serve(grid: Grid, run_config: Settings) -> None:
    """The federation of ``run_config["config"]``, over ``grid``, into ``run_config["out"]``.

    The clients are the nodes that answer, with the training-set sizes they announce.
    """
    config = load_config(str(run_config["config"]))
    found = node_clients(grid, int(run_config["nodes"]), NODE_WAIT_S)
    nodes = {client: node for client, (node, _size) in found.items()}
    remote = {client: size for client, (_node, size) in sorted(found.items())}
    out = Path(str(run_config["out"]))
    engines = flower_engines(grid, nodes, config.server.reply_timeout_s)
    run(config, out, overwrite=True, engine=engines, remote=remote)


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


def node_data(config: Config, tokenizer: Any, node_config: Settings) -> FederatedData:
    """The data this node holds: its own file (``data``), or one partition of the
    configuration's corpus (``partition-id``) with the corpus's test split.

    Raises:
        ConfigError: neither is given, or a bad ``client`` name.
        DataError: the node's file is unusable.
    """
    if "data" in node_config:
        path = str(node_config["data"])
        client = str(node_config.get("client", Path(path).stem))
        if not CLIENT_NAME.fullmatch(client):
            raise ConfigError(
                f"node client = {client!r}: a client name is 1-64 letters, digits, '.', "
                "'_' or '-', starting with a letter or digit"
            )
        own = build_own_client(config.data, tokenizer, path, client, config.seed)
        return FederatedData({client: own}, [])
    if "partition-id" not in node_config:
        raise ConfigError(
            "the node config names no data: give data=PATH (the node's own .jsonl/.txt "
            "file) or partition-id=N (a partition of the configuration's corpus)"
        )
    whole = build_federated_data(config.data, tokenizer, config.seed)
    client = pick_client(whole.clients, int(node_config["partition-id"]))
    return FederatedData({client: whole.clients[client]}, whole.test)


def node_client(node_config: Settings, run_config: Settings) -> tuple[ClientId, int]:
    """The node's client id and training examples, from its data alone (no model)."""
    config = load_config(str(run_config["config"]))
    data = node_data(config, load_tokenizer(config.model), node_config)
    [(client, held)] = data.clients.items()
    return client, len(held.train)


@cache
def _node(
    config_path: str, node_key: tuple[tuple[str, str], ...]
) -> tuple[ClientId, ClientHandler]:
    node_config = dict(node_key)
    config = load_config(config_path)
    ws = prepare(config, with_data=False)
    ws.data = node_data(config, ws.tokenizer, node_config)
    ws.public = build_public_data(config, ws.tokenizer)
    state_dir = Path(node_config.get("state-dir", "fedllm-node-state"))
    [client] = ws.data.clients
    return client, node_client_side(ws, state_dir)


def node_handler(node_config: Settings, run_config: Settings) -> tuple[ClientId, ClientHandler]:
    """The node's client id and its client side (built once per process)."""
    key = tuple(sorted((str(k), str(v)) for k, v in node_config.items()))
    return _node(str(run_config["config"]), key)


server_app = make_server_app(serve)
client_app = make_client_app(node_client, node_handler)
