"""A node's fedllm worker: the client side built once, answering every message of a run.

Flower starts a ClientApp process for every message; building the client side in
each (imports, tokenizer, data, the base model) would cost seconds per message, and
minutes for a large model. The ClientApp instead hands each message's encoded bytes
to this worker over a Unix socket, starting the worker on the node's first message;
the worker keeps the model loaded, answers messages one at a time, and exits when it
has been idle for ``idle_s`` seconds or the SuperNode that started it is gone. It
lives in the SuperNode's process group, so stopping the SuperNode's group stops it.

Wire format on the socket, both ways: a 1-byte kind, an 8-byte big-endian length,
then that many bytes. A request's kind is its phase's index in :data:`PHASES`; a
reply's is 0 (the reply's fedllm encoding) or 1 (the error text, UTF-8).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedllm.client.evaluate import EVALUATE
from fedllm.client.side import TRAIN
from fedllm.message import ConfigValue, Message
from fedllm.protocol.engine import ClientHandler
from fedllm.types import ClientId
from fedllm.wire import decode_message, encode_message

IDENTIFY = "identify"
PHASES = (IDENTIFY, TRAIN, EVALUATE)
"""What a worker answers: who its client is, and the client side's phases."""

OK, FAILED = 0, 1
HEADER = struct.Struct(">BQ")
IDLE_S = 900.0
"""A worker with no message for this long exits (seconds)."""
START_S = 1800.0
"""Longest a ClientApp waits for a worker it started to listen (seconds)."""


class WorkerError(RuntimeError):
    """The worker did not start, or failed to answer (its log tail is in the message)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is built from: the run's fedllm configuration and the node's config.

    Attributes:
        config: the fedllm configuration (TOML text) of the run.
        node: the node's config (``data``, ``client``, ``partition-id``, ``state-dir``).
    """

    config: str
    node: Mapping[str, str]

    @property
    def key(self) -> str:
        """Names this worker: the same run and node config, the same worker."""
        text = json.dumps([self.config, sorted(self.node.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def socket_path(self) -> Path:
        """Under the system's temp folder (a Unix socket path is limited to ~100 bytes)."""
        return Path(tempfile.gettempdir()) / f"fedllm-worker-{self.key}.sock"

    @property
    def state_dir(self) -> Path:
        return Path(self.node.get("state-dir", "fedllm-node-state"))


def send(sock: socket.socket, kind: int, payload: bytes) -> None:
    sock.sendall(HEADER.pack(kind, len(payload)))
    sock.sendall(payload)


def receive(sock: socket.socket) -> tuple[int, bytes]:
    """One framed ``(kind, payload)``.

    Raises:
        ConnectionError: the other end closed before a whole frame arrived.
    """
    kind, size = HEADER.unpack(_exactly(sock, HEADER.size))
    return kind, _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError(f"the connection closed {left} bytes short of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def ask(spec: WorkerSpec, phase: str, message: Message) -> Message:
    """``message`` for ``phase`` answered by the node's worker (started if not running).

    Raises:
        WorkerError: the worker could not start, or its client side failed.
    """
    with _connected(spec) as sock:
        send(sock, PHASES.index(phase), encode_message(message))
        kind, payload = receive(sock)
    if kind != OK:
        raise WorkerError(f"the node's fedllm worker failed: {payload.decode(errors='replace')}")
    return decode_message(payload)


@contextlib.contextmanager
def _connected(spec: WorkerSpec) -> Iterator[socket.socket]:
    sock = _connect(spec.socket_path)
    if sock is None:
        sock = _start(spec)
    try:
        yield sock
    finally:
        sock.close()


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start(spec: WorkerSpec) -> socket.socket:
    """Start the worker (one at a time per node: a lock in its state folder) and connect."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    log = spec.state_dir / f"worker-{spec.key}.log"
    with (spec.state_dir / "worker.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(spec.socket_path)  # another ClientApp may have started it
        if sock is not None:
            return sock
        spec_file = spec.state_dir / f"worker-{spec.key}.json"
        spec_file.write_text(json.dumps({"config": spec.config, "node": dict(spec.node)}))
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedllm.deploy.worker", str(spec_file), str(os.getppid())],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            sock = _connect(spec.socket_path)
            if sock is not None:
                return sock
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise WorkerError(
                    f"the node's fedllm worker exited at start; its log ends:\n{tail}"
                )
            time.sleep(0.2)
        process.kill()
        raise WorkerError(f"the node's fedllm worker did not listen within {START_S:.0f} s")


Answer = Callable[[str, Message], Message]


def serve(path: Path, answer: Answer, parent: int, idle_s: float = IDLE_S) -> None:
    """Answer framed requests on ``path`` one at a time until idle or ``parent`` is gone."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o600)  # only this user's ClientApps may talk to it
    server.listen(8)
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
        reply = answer(PHASES[kind], decode_message(payload))
    except Exception:  # the client side's failure goes back to the ClientApp, as text
        send(conn, FAILED, traceback.format_exc().encode())
        return
    send(conn, OK, encode_message(reply))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity_message(client: ClientId, train: int) -> Message:
    """The answer to :data:`IDENTIFY`: the node's client id and training examples."""
    config: dict[str, ConfigValue] = {"client": client, "train": train}
    return Message(config=config)


def node_answer(client: ClientId, train: int, handler: ClientHandler) -> Answer:
    """What a worker answers for the node's client: its identity, or the client side."""

    def answer(phase: str, message: Message) -> Message:
        if phase == IDENTIFY:
            return identity_message(client, train)
        return handler(client, phase, message)

    return answer


def main(argv: list[str]) -> int:
    """``python -m fedllm.deploy.worker SPEC_FILE PARENT_PID``: build the node, serve."""
    from fedllm.deploy.apps import built_node

    raw = json.loads(Path(argv[0]).read_text())
    spec = WorkerSpec(raw["config"], raw["node"])
    client, train, handler = built_node(spec.config, spec.node)
    serve(spec.socket_path, node_answer(client, train, handler), int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
