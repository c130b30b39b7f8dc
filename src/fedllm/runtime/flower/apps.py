"""The ServerApp around fedllm, and how it learns who the nodes are.

What runs inside is handed in from above (:mod:`fedllm.deploy.apps`), so this
package stays below the run loop: ``serve(grid, run_config)`` runs the federation
over the grid. The nodes' ClientApp is :mod:`~fedllm.runtime.flower.light`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedllm.runtime.flower.chunks import IDENTITY
from fedllm.runtime.flower.light import Settings
from fedllm.types import ClientId

__all__ = ["IDENTITY", "Grid", "Serve", "Settings", "make_server_app", "node_clients"]

Serve = Callable[[Grid, Settings], None]


def make_server_app(serve: Serve) -> ServerApp:
    """A ServerApp whose main runs ``serve`` with the grid and the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context.run_config)

    return app


def node_clients(
    grid: Grid, expected: int, timeout_s: float, answer_s: float | None = None
) -> dict[ClientId, tuple[int, int]]:
    """Wait for ``expected`` nodes and ask each who it is: client id -> (node id,
    training examples).

    Args:
        timeout_s: how long the nodes may take to connect (seconds).
        answer_s: how long they may then take to answer (a node builds its client
            side to answer: the model loads); default: what is left of ``timeout_s``.

    Raises:
        TimeoutError: fewer nodes connected, or answered, in time.
        ValueError: two nodes answer for the same client.
    """
    deadline = time.monotonic() + timeout_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        raise TimeoutError(f"{len(nodes)} of {expected} nodes connected in {timeout_s:.0f} s")
    asks = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id="identify")
        for n in nodes
    ]
    found: dict[ClientId, tuple[int, int]] = {}
    wait = answer_s if answer_s is not None else max(deadline - time.monotonic(), 1.0)
    for reply in grid.send_and_receive(asks, timeout=wait):
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
