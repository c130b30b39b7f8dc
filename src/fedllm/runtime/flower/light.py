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

from fedllm.runtime.flower.chunks import CHALLENGE, IDENTITY, pack, unpack

Settings = Mapping[str, bool | float | int | str]
"""A Flower run or node config."""

Identify = Callable[[Settings, Settings, bytes, int], Mapping[str, int | str | bytes]]
"""``(node config, run config, the server's challenge, the node's Flower id) -> its
identity``: ``client`` (id), ``train`` (examples), ``signature`` (bytes, maybe empty)."""

Forward = Callable[[Settings, Settings, str, bytes], bytes]
"""``(node config, run config, phase, encoded message) -> encoded reply``."""


def make_forwarding_client_app(identify: Identify, forward: Forward) -> ClientApp:
    """A ClientApp: ``query`` answers who the node is (signing the server's challenge
    where it can, see :mod:`fedllm.deploy.admission`); ``train`` and ``evaluate``
    messages go to ``forward`` as bytes and its bytes come back as the reply."""
    app = ClientApp()

    @app.query()
    def query(message: FlowerMessage, context: Context) -> FlowerMessage:
        asked = message.content.config_records.get(CHALLENGE)
        challenge = asked.get("challenge", b"") if asked is not None else b""
        if not isinstance(challenge, bytes):
            raise ValueError("the identity query's challenge is not bytes")
        identity = identify(context.node_config, context.run_config, challenge, context.node_id)
        content = RecordDict({IDENTITY: ConfigRecord(dict(identity))})
        return FlowerMessage(content, reply_to=message)

    def answer(message: FlowerMessage, context: Context) -> FlowerMessage:
        phase, payload = unpack(message.content)
        reply = forward(context.node_config, context.run_config, phase, payload)
        return FlowerMessage(pack(reply, phase), reply_to=message)

    app.train()(answer)
    app.evaluate()(answer)
    return app
