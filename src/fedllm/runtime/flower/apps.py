"""The ServerApp around fedllm, and how it learns who the nodes are.

What runs inside is handed in from above (:mod:`fedllm.deploy.apps`), so this
package stays below the run loop: ``serve(grid, run_config)`` runs the federation
over the grid. The nodes' ClientApp is :mod:`~fedllm.runtime.flower.light`'s.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedllm.runtime.flower.chunks import CHALLENGE, IDENTITY
from fedllm.runtime.flower.light import Settings

__all__ = [
    "CHALLENGE",
    "CHALLENGE_BYTES",
    "ERROR",
    "IDENTITY",
    "Grid",
    "Identity",
    "Serve",
    "Settings",
    "make_server_app",
    "node_identities",
]

ERROR = "error"
"""The key of a node's answer that was an error reply (its reason)."""

CHALLENGE_BYTES = 32
"""Length of the random challenge each node signs with its identity (bytes)."""

Serve = Callable[[Grid, Settings], None]


def make_server_app(serve: Serve) -> ServerApp:
    """A ServerApp whose main runs ``serve`` with the grid and the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context.run_config)

    return app


Identity = Mapping[str, object]
"""A node's answer to the identity question (its ``IDENTITY`` config record)."""


def node_identities(
    grid: Grid, expected: int, timeout_s: float, answer_s: float | None = None
) -> list[tuple[int, bytes, Identity]]:
    """Wait for ``expected`` nodes, then ask every connected node who it is, each with a
    fresh random challenge: (node id, the challenge sent, its answer) per node that
    answered; an error reply's answer is ``{ERROR: its reason}``.

    Args:
        timeout_s: how long the nodes may take to connect (seconds).
        answer_s: how long they may then take to answer (a node builds its client
            side to answer: the model loads); default: what is left of ``timeout_s``.

    Raises:
        TimeoutError: fewer nodes connected in time.
    """
    deadline = time.monotonic() + timeout_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        raise TimeoutError(f"{len(nodes)} of {expected} nodes connected in {timeout_s:.0f} s")
    challenges = {node: secrets.token_bytes(CHALLENGE_BYTES) for node in nodes}
    asks = [
        Message(
            RecordDict({CHALLENGE: ConfigRecord({"challenge": challenge})}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
            group_id="identify",
        )
        for node, challenge in challenges.items()
    ]
    wait = answer_s if answer_s is not None else max(deadline - time.monotonic(), 1.0)
    answers: list[tuple[int, bytes, Identity]] = []
    for reply in grid.send_and_receive(asks, timeout=wait):
        node = reply.metadata.src_node_id
        if node not in challenges:
            continue
        if reply.has_error():
            answers.append((node, challenges[node], {ERROR: reply.error.reason}))
            continue
        identity = reply.content.config_records.get(IDENTITY)
        answers.append((node, challenges[node], {} if identity is None else dict(identity)))
    return answers
