"""An in-process stand-in for a ServerApp's grid: real Flower messages, through protobuf.

Each message is serialised to Flower's protobuf and back on the way to its node and on
the way back, as a SuperLink would carry it; a node can be made to fail (an error
reply) or to stay silent (no reply: a timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Error, Message
from flwr.common import serde
from flwr.supercore.task_identity import TaskIdentity

NodeApp = Callable[[Message], Message]


SECAGG_THREE_NODES = (
    "data.num_clients=3",
    "data.partition='iid'",
    "server.clients_per_round=3",
    "server.weighting='uniform'",
    "server.rounds=1",
    "secagg.enabled=true",
    "secagg.bits=48",
    "secagg.clip_range=0.5",
)
"""One round of SecAgg+ among three clients (a 48-bit ring, a wide clip range): the
federation the loopback SecAgg tests deploy and compare with the simulator."""


def over_the_wire(message: Message) -> Message:
    return serde.message_from_proto(serde.message_to_proto(message))


class InProcessGrid:
    """Routes messages to node apps (node id -> train function) in process.

    Attributes:
        failing: node ids that answer with an error.
        silent: node ids that never answer.
        sent_bytes: protobuf bytes of every message sent, per node.
        timeouts: the timeout of every send_and_receive call.
    """

    def __init__(self, apps: Mapping[int, NodeApp]) -> None:
        self.apps = dict(apps)
        self.failing: set[int] = set()
        self.silent: set[int] = set()
        self.sent_bytes: dict[int, int] = {}
        self.timeouts: list[float | None] = []
        self._count = 0
        # What a running ServerApp has set when fedllm builds its messages with Flower's
        # Message constructor: this run, the SuperLink's node id and the app's task.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def get_node_ids(self) -> list[int]:
        return sorted(self.apps)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        replies = []
        for message in messages:
            self._count += 1
            message.metadata.__dict__["_message_id"] = f"m{self._count}"  # as a grid does
            node = message.metadata.dst_node_id
            proto = serde.message_to_proto(message)
            self.sent_bytes[node] = self.sent_bytes.get(node, 0) + proto.ByteSize()
            if node in self.silent:
                continue
            arrived = serde.message_from_proto(proto)
            if node in self.failing:
                replies.append(Message(Error(code=0, reason="ClientApp crashed"), reply_to=arrived))
                continue
            replies.append(over_the_wire(self.apps[node](arrived)))
        return replies
