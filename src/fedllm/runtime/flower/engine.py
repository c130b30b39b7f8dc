"""The engine over Flower: a phase's messages go to SuperNodes through a ServerApp's grid.

The round driver, protocols and plug-ins are the ones the simulator runs; this
only moves their messages. Each client is a Flower node; a node that answers
with an error, or not within the timeout, is :class:`~fedllm.message.Dropped`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from flwr.app import Message as FlowerMessage
from flwr.app import MessageType
from flwr.serverapp import Grid

from fedllm.client.evaluate import EVALUATE
from fedllm.message import Dropped, Message, Reply
from fedllm.protocol.engine import ClientHandler
from fedllm.runtime.dropout import DropoutPlan
from fedllm.runtime.flower.records import from_records, to_records
from fedllm.runtime.simulation import EngineFactory
from fedllm.types import ClientId
from fedllm.wire import WireError


class FlowerEngine:
    """Sends each client's message to its node and yields the decoded replies.

    Args:
        grid: the ServerApp's grid.
        nodes: client id -> Flower node id.
        timeout_s: how long a phase waits for replies; None: until every node answers.
    """

    def __init__(
        self, grid: Grid, nodes: Mapping[ClientId, int], timeout_s: float | None = None
    ) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout_s = timeout_s
        self._times: dict[str, float] = {}

    def take_times(self) -> dict[str, float]:
        """Wall seconds per phase from sending its messages to the last reply (Flower's
        transport, the nodes' work and their process start-up), since the last call."""
        times, self._times = self._times, {}
        return times

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        """Every client's reply (in the order sent), or Dropped with what happened."""
        unknown = sorted(set(messages) - set(self.nodes))
        if unknown:
            raise KeyError(f"no Flower node for client(s) {unknown}")
        kind = MessageType.EVALUATE if phase == EVALUATE else MessageType.TRAIN
        sent = {
            client: FlowerMessage(
                to_records(message, phase),
                dst_node_id=self.nodes[client],
                message_type=kind,
                group_id=str(message.round),
            )
            for client, message in messages.items()
        }
        by_node = {node: client for client, node in self.nodes.items()}
        replies: dict[ClientId, Reply] = {}
        start = time.perf_counter()
        for reply in self.grid.send_and_receive(list(sent.values()), timeout=self.timeout_s):
            client = by_node.get(reply.metadata.src_node_id)
            if client is not None and client in sent:
                replies[client] = _decode_reply(reply)
        key = f"transport/{phase}"
        self._times[key] = self._times.get(key, 0.0) + time.perf_counter() - start
        for client in sent:
            yield client, replies.get(client, Dropped("no reply from its node in time"))


def flower_engines(
    grid: Grid, nodes: Mapping[ClientId, int], timeout_s: float | None = None
) -> EngineFactory:
    """The engine factory a ServerApp hands to the run: every mode's rounds go over
    ``grid`` to ``nodes``. The in-process client side and the simulated dropouts
    are ignored: the clients, and their dropouts, are the real nodes'."""

    def factory(handler: ClientHandler, dropouts: DropoutPlan | None) -> FlowerEngine:
        del handler, dropouts
        return FlowerEngine(grid, nodes, timeout_s)

    return factory


def client_app_handler(
    handler: ClientHandler, client: ClientId
) -> Callable[[FlowerMessage], FlowerMessage]:
    """A ClientApp's train function answering with fedllm's client side for ``client``."""

    def answer(message: FlowerMessage) -> FlowerMessage:
        phase, decoded = from_records(message.content)
        reply = handler(client, phase, decoded)
        return FlowerMessage(to_records(reply, phase), reply_to=message)

    return answer


def _decode_reply(reply: FlowerMessage) -> Reply:
    if reply.has_error():
        return Dropped(f"node error {reply.error.code}: {reply.error.reason}")
    try:
        return from_records(reply.content)[1]
    except WireError as err:
        return Dropped(f"undecodable reply: {err}")
