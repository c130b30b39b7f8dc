"""A ClientApp that forwards: each message's bytes to a handler of bytes, nothing decoded.

Flower starts a process per message; this app imports flwr and the standard library
only (about a second to start), where decoding the message would import torch (about
ten). What answers the bytes (a node's worker) is handed in from above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp

from fedllm.runtime.flower.chunks import IDENTITY, pack, unpack

Settings = Mapping[str, bool | float | int | str]
"""A Flower run or node config."""

Identify = Callable[[Settings, Settings], tuple[str, int]]
"""``(node config, run config) -> (the node's client id, its training examples)``."""

Forward = Callable[[Settings, Settings, str, bytes], bytes]
"""``(node config, run config, phase, encoded message) -> encoded reply``."""


def make_forwarding_client_app(identify: Identify, forward: Forward) -> ClientApp:
    """A ClientApp: ``query`` answers who the node is; ``train`` and ``evaluate``
    messages go to ``forward`` as bytes and its bytes come back as the reply."""
    app = ClientApp()

    @app.query()
    def query(message: FlowerMessage, context: Context) -> FlowerMessage:
        client, train = identify(context.node_config, context.run_config)
        content = RecordDict({IDENTITY: ConfigRecord({"client": client, "train": train})})
        return FlowerMessage(content, reply_to=message)

    def answer(message: FlowerMessage, context: Context) -> FlowerMessage:
        phase, payload = unpack(message.content)
        reply = forward(context.node_config, context.run_config, phase, payload)
        return FlowerMessage(pack(reply, phase), reply_to=message)

    app.train()(answer)
    app.evaluate()(answer)
    return app
