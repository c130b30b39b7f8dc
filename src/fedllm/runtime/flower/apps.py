"""Flower apps around fedllm: a ServerApp that drives a run, a ClientApp per node.

What runs inside them is handed in from above (:mod:`fedllm.deploy.apps`), so this
package stays below the run loop: ``serve(grid, run_config)`` runs the federation
over the grid; ``node_handler(node_config, run_config)`` gives the node's client id
and the handler answering its messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, MessageType, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedllm.protocol.engine import ClientHandler
from fedllm.runtime.flower.engine import client_app_handler
from fedllm.types import ClientId

__all__ = [
    "IDENTITY",
    "Grid",
    "NodeClient",
    "NodeHandler",
    "Serve",
    "Settings",
    "make_client_app",
    "make_server_app",
    "node_clients",
]

Settings = Mapping[str, bool | float | int | str]
"""A Flower run or node config."""

Serve = Callable[[Grid, Settings], None]
NodeClient = Callable[[Settings, Settings], tuple[ClientId, int]]
"""``(node config, run config) -> (the node's client id, its training examples)``
(cheap: no model)."""
NodeHandler = Callable[[Settings, Settings], tuple[ClientId, ClientHandler]]
"""``(node config, run config) -> (client id, its client side)``."""

IDENTITY = "fedllm.identity"
"""Config record of a node's answer to the server's query: its client id (``client``)
and training-set size (``train``, the sampling and weighting size)."""


def make_server_app(serve: Serve) -> ServerApp:
    """A ServerApp whose main runs ``serve`` with the grid and the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context.run_config)

    return app


def make_client_app(node_client: NodeClient, node_handler: NodeHandler) -> ClientApp:
    """A ClientApp: ``query`` answers the node's client id, ``train`` a fedllm message.

    Flower starts a process per message, so the handler is built for each one;
    ``query`` only names the client and loads no model.
    """
    app = ClientApp()

    @app.query()
    def identify(message: FlowerMessage, context: Context) -> FlowerMessage:
        client, train = node_client(context.node_config, context.run_config)
        content = RecordDict({IDENTITY: ConfigRecord({"client": client, "train": train})})
        return FlowerMessage(content, reply_to=message)

    def answer(message: FlowerMessage, context: Context) -> FlowerMessage:
        client, handler = node_handler(context.node_config, context.run_config)
        return client_app_handler(handler, client)(message)

    app.train()(answer)
    app.evaluate()(answer)
    return app


def node_clients(grid: Grid, expected: int, timeout_s: float) -> dict[ClientId, tuple[int, int]]:
    """Wait for ``expected`` nodes and ask each who it is: client id -> (node id,
    training examples).

    Raises:
        TimeoutError: fewer nodes connected, or answered, within ``timeout_s``.
        ValueError: two nodes answer for the same client.
    """
    deadline = time.monotonic() + timeout_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        raise TimeoutError(f"{len(nodes)} of {expected} nodes connected in {timeout_s:.0f} s")
    asks = [grid.create_message(RecordDict(), MessageType.QUERY, n, "identify") for n in nodes]
    found: dict[ClientId, tuple[int, int]] = {}
    for reply in grid.send_and_receive(asks, timeout=max(deadline - time.monotonic(), 1.0)):
        if reply.has_error():
            continue
        identity = reply.content.config_records[IDENTITY]
        client, node = str(identity["client"]), reply.metadata.src_node_id
        if client in found:
            raise ValueError(
                f"nodes {found[client][0]} and {node} both answer for client {client!r}: "
                "give each node its own partition-id, or its own client= name"
            )
        found[client] = (node, int(str(identity["train"])))
    if len(found) < expected:
        raise TimeoutError(f"{len(found)} of {expected} nodes said which client they are")
    return found
