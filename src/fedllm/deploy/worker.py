"""A node's fedllm worker: the client side built once, answering every message of a run.

Flower starts a ClientApp process for every message; building the client side in
each (imports, tokenizer, data, the base model) would cost seconds per message, and
minutes for a large model. The ClientApp (:mod:`fedllm.deploy.node_app`) instead hands
each message's encoded bytes to this worker over a Unix socket
(:mod:`fedllm.deploy.link`), starting the worker on the node's first message; the
worker keeps the model loaded, answers messages one at a time, and exits when it has
been idle for ``idle_s`` seconds or the SuperNode that started it is gone. It lives in
the SuperNode's process group, so stopping the SuperNode's group stops it.

It answers this user's processes only (on Linux: ``SO_PEERCRED``; elsewhere the socket
folder's mode 0700 is the only guard), and tells a ClientApp of a failure its category
only (:func:`failure`): the traceback goes to the worker's log, on the node.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from fedllm.data.sources import DataError
from fedllm.deploy.errors import NodeRefusal
from fedllm.deploy.link import (
    CLIENT_FAILED,
    CONFIG_REFUSED,
    DATA_ERROR,
    FAILED,
    IDENTIFY,
    IDLE_S,
    OK,
    PHASES,
    REFUSED,
    NodeConfigError,
    WorkerSpec,
    peer_credentials,
    receive,
    refusal,
    send,
)
from fedllm.protocol.engine import ClientHandler
from fedllm.settings import ConfigError
from fedllm.types import ClientId
from fedllm.wire import decode_message, encode_message

LOGGER = logging.getLogger(__name__)

Answer = Callable[[str, bytes], bytes]
"""``(phase, request bytes) -> reply bytes``."""

FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (DataError, DATA_ERROR),
    (ConfigError, CONFIG_REFUSED),
    (NodeConfigError, CONFIG_REFUSED),
)
"""The category of :data:`~fedllm.deploy.link.CATEGORIES` a failure of these classes
is told as (any other: ``CLIENT_FAILED``)."""
BUILD_FAILED_IDLE_S = 10.0
"""A worker whose client side failed to build answers every request with that failure
until idle this long (seconds), then exits: the ClientApp that started it learns why,
and a fixed node builds afresh on its next message."""


def failure(err: BaseException) -> tuple[int, bytes]:
    """The frame telling the ClientApp (and so the server) of ``err``: a NodeRefusal's
    message (cut to ``REFUSAL_CHARS``), else the category of its class, never its text."""
    if isinstance(err, NodeRefusal):
        return REFUSED, refusal(str(err)).encode()
    told = next((told for kind, told in FAILURES if isinstance(err, kind)), CLIENT_FAILED)
    return FAILED, told.encode()


def listen(path: Path) -> socket.socket:
    """A Unix socket listening on ``path`` (mode 0600, in the node's private socket folder).

    It is bound under a passing name and renamed to ``path`` once it listens, so that a
    sweep of stale sockets (:func:`~fedllm.deploy.link.remove_stale_sockets`) never
    takes it for a dead one. A worker listens before it builds the client side: a
    ClientApp's connection then waits in the backlog for the first answer instead of
    taking "not listening" for a worker that failed to start.
    """
    passing = path.with_name(f".{secrets.token_hex(8)}")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(passing))
        passing.chmod(0o600)
        server.listen(8)
        os.replace(passing, path)
    except BaseException:
        server.close()
        passing.unlink(missing_ok=True)
        raise
    return server


def serve(
    server: socket.socket, path: Path, answer: Answer, parent: int, idle_s: float = IDLE_S
) -> None:
    """Answer framed requests on ``server`` (listening on ``path``) one at a time, from
    this user's processes only, until idle for ``idle_s`` seconds or ``parent`` is gone;
    then remove ``path``."""
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
                if _from_this_user(conn) and _answer_one(conn, answer):
                    last = time.monotonic()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def _from_this_user(conn: socket.socket) -> bool:
    peer = peer_credentials(conn)
    if peer is None or peer[1] == os.getuid():
        return True
    LOGGER.warning(
        "dropped a connection from process %d of uid %d: not this user's (uid %d)",
        peer[0],
        peer[1],
        os.getuid(),
    )
    return False


def _answer_one(conn: socket.socket, answer: Answer) -> bool:
    """Answer one request on ``conn``: the reply, or the failure as :func:`failure` tells
    it (the traceback goes to this worker's log). Whether a request came."""
    try:
        kind, payload = receive(conn)
    except ConnectionError:  # a sweep's probe, or a ClientApp gone before asking
        return False
    try:
        reply = answer(PHASES[kind], payload)
    except Exception as err:
        frame = failure(err)
        told = frame[1].decode()
        LOGGER.exception("a request (kind %d) failed; the ClientApp is told: %s", kind, told)
    else:
        frame = (OK, reply)
    try:
        send(conn, *frame)
    except OSError as err:
        LOGGER.warning("the ClientApp left before the reply (%s)", err)
    return True


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


def run_worker(
    spec: WorkerSpec,
    path: Path,
    parent: int,
    idle_s: float = IDLE_S,
    failed_idle_s: float = BUILD_FAILED_IDLE_S,
) -> bool:
    """Listen on ``path``, build the node's client side and serve it (until idle for
    ``idle_s``); a build that fails is logged and its failure answered to every request
    (:func:`failure`) until idle for ``failed_idle_s``. Whether the build succeeded."""
    from fedllm.deploy.apps import built_node

    server = listen(path)
    try:
        client, train, handler = built_node(spec.config, spec.node)
    except Exception as err:
        LOGGER.exception("building the node's client side failed")
        serve(server, path, _failing(err), parent, failed_idle_s)
        return False
    except BaseException:
        server.close()
        path.unlink(missing_ok=True)
        raise
    serve(server, path, node_answer(client, train, handler), parent, idle_s)
    return True


def _failing(err: Exception) -> Answer:
    def answer(phase: str, payload: bytes) -> bytes:
        raise err

    return answer


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def main(argv: list[str]) -> int:
    """``python -m fedllm.deploy.worker SPEC_FILE PARENT_PID``: build the node, serve.

    Everything the worker writes is its user's alone (umask 0o077); its log is its
    stderr (the ClientApp opened it, mode 0600). SIGTERM (a deployment's stop) exits
    through the cleanup that removes the socket.
    """
    os.umask(0o077)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    signal.signal(signal.SIGTERM, _stop)
    raw = json.loads(Path(argv[0]).read_text())
    spec = WorkerSpec(raw["config"], raw["node"])
    built = run_worker(spec, Path(raw.get("socket") or spec.socket_path), int(argv[1]))
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
