"""An in-process stand-in for a ServerApp's grid: real Flower messages, through protobuf.

Each message is serialised to Flower's protobuf and back on the way to its node and on
the way back, as a SuperLink would carry it; a node can be made to fail (an error
reply) or to stay silent (no reply: a timeout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Error, Message, Metadata, RecordDict
from flwr.common import serde

NodeApp = Callable[[Message], Message]


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

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        self._count += 1
        metadata = Metadata(
            run_id=1,
            message_id=f"m{self._count}",
            src_node_id=0,
            dst_node_id=dst_node_id,
            reply_to_message_id="",
            group_id=group_id,
            created_at=time.time(),
            ttl=3600.0,
            message_type=message_type,
        )
        return Message(metadata=metadata, content=content)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        replies = []
        for message in messages:
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
