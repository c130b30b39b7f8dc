"""A node's fedllm worker: the client side built once, answering every message of a run.

Flower starts a ClientApp process for every message; building the client side in
each (imports, tokenizer, data, the base model) would cost seconds per message, and
minutes for a large model. The ClientApp (:mod:`fedllm.deploy.node_app`) instead hands
each message's encoded bytes to this worker over a Unix socket
(:mod:`fedllm.deploy.link`), starting the worker on the node's first message; the
worker keeps the model loaded, answers messages one at a time, and exits when it has
been idle for ``idle_s`` seconds or the SuperNode that started it is gone. It lives in
the SuperNode's process group, so stopping the SuperNode's group stops it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from fedllm.deploy.link import (
    FAILED,
    IDENTIFY,
    IDLE_S,
    OK,
    PHASES,
    WorkerSpec,
    receive,
    send,
)
from fedllm.protocol.engine import ClientHandler
from fedllm.types import ClientId
from fedllm.wire import decode_message, encode_message

Answer = Callable[[str, bytes], bytes]
"""``(phase, request bytes) -> reply bytes``."""


def listen(path: Path) -> socket.socket:
    """A Unix socket listening on ``path`` (mode 0600: only this user's ClientApps).

    A worker listens before it builds the client side: a ClientApp's connection then
    waits in the backlog for the first answer instead of taking "not listening" for a
    worker that failed to start.
    """
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o600)
    server.listen(8)
    return server


def serve(
    server: socket.socket, path: Path, answer: Answer, parent: int, idle_s: float = IDLE_S
) -> None:
    """Answer framed requests on ``server`` (listening on ``path``) one at a time until
    idle for ``idle_s`` seconds or ``parent`` is gone; then remove ``path``."""
    server.settimeout(1.0)
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s and _alive(parent):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                _answer_one(conn, answer)
            last = time.monotonic()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def _answer_one(conn: socket.socket, answer: Answer) -> None:
    try:
        kind, payload = receive(conn)
        reply = answer(PHASES[kind], payload)
    except Exception:  # the client side's failure goes back to the ClientApp, as text
        send(conn, FAILED, traceback.format_exc().encode())
        return
    send(conn, OK, reply)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_answer(client: ClientId, train: int, handler: ClientHandler) -> Answer:
    """What a worker answers for the node's client: its identity, or the client side's
    reply to a decoded message."""

    def answer(phase: str, payload: bytes) -> bytes:
        if phase == IDENTIFY:
            return json.dumps({"client": client, "train": train}).encode()
        return encode_message(handler(client, phase, decode_message(payload)))

    return answer


def main(argv: list[str]) -> int:
    """``python -m fedllm.deploy.worker SPEC_FILE PARENT_PID``: build the node, serve."""
    from fedllm.deploy.apps import built_node

    raw = json.loads(Path(argv[0]).read_text())
    spec = WorkerSpec(raw["config"], raw["node"])
    server = listen(spec.socket_path)
    try:
        client, train, handler = built_node(spec.config, spec.node)
    except BaseException:
        server.close()
        spec.socket_path.unlink(missing_ok=True)
        raise
    serve(server, spec.socket_path, node_answer(client, train, handler), int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
