"""The ClientApp's side of a node's fedllm worker: find it (or start it), hand it a
message's encoded bytes, take its reply; the standard library only, so a ClientApp
process that just forwards starts without importing torch.

The worker (:mod:`fedllm.deploy.worker`) is the client side built once, answering
every message of a run.

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
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

IDENTIFY = "identify"
PHASES = (
    IDENTIFY,
    "train",
    "evaluate",
    *(f"secagg/{step}" for step in ("advertise", "share", "masked", "unmask")),
    "he/train",
    "he/decrypt",
)
"""What a worker answers: who its client is (a JSON object ``{"client", "train"}``),
and the client side's phases (``fedllm.client.side.TRAIN``, ``...evaluate.EVALUATE``,
``fedllm.client.secagg.PHASES``, ``fedllm.client.he.PHASES``: spelled out here, which
imports no torch)."""

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A client name a node may give (it names files in the node's state folder)."""

OK, FAILED = 0, 1
HEADER = struct.Struct(">BQ")
IDLE_S = 900.0
"""A worker with no message for this long exits (seconds)."""
START_S = 1800.0
"""Longest a ClientApp waits for a worker it started to listen (seconds)."""


class WorkerError(RuntimeError):
    """The worker did not start, or failed to answer (its log tail is in the message)."""


class NodeConfigError(ValueError):
    """A node config that names no data, or a bad client name."""


def check_node_config(node_config: Mapping[str, object]) -> None:
    """Refuse a node config that names no data, or a bad client name (before any work).

    Raises:
        NodeConfigError: naming the problem and what would be valid.
    """
    if "data" not in node_config and "partition-id" not in node_config:
        raise NodeConfigError(
            "the node config names no data: give data=PATH (the node's own .jsonl/.txt "
            "file) or partition-id=N (a partition of the configuration's corpus)"
        )
    if "data" in node_config:
        client = str(node_config.get("client", Path(str(node_config["data"])).stem))
        if not CLIENT_NAME.fullmatch(client):
            raise NodeConfigError(
                f"node client = {client!r}: a client name is 1-64 letters, digits, '.', "
                "'_' or '-', starting with a letter or digit"
            )


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
    def log_path(self) -> Path:
        """The worker's output, in the node's state folder."""
        return self.state_dir / f"worker-{self.key}.log"

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


def ask(spec: WorkerSpec, phase: str, payload: bytes) -> bytes:
    """``payload`` (an encoded message) for ``phase`` answered by the node's worker
    (started if not running): the reply's encoding.

    Raises:
        WorkerError: the worker could not start, or its client side failed.
    """
    try:
        kind, reply = _exchange(spec, PHASES.index(phase), payload)
    except (ConnectionError, BrokenPipeError) as err:  # it died building or answering
        raise WorkerError(
            f"the node's fedllm worker stopped before answering ({err}); its log ends:\n"
            f"{_log_tail(spec)}"
        ) from None
    if kind != OK:
        raise WorkerError(f"the node's fedllm worker failed: {reply.decode(errors='replace')}")
    return reply


def _exchange(spec: WorkerSpec, kind: int, payload: bytes) -> tuple[int, bytes]:
    """Send one request and read its reply. A worker that closed before reading the
    request (it was exiting, idle) gets the request once more, on a fresh worker."""
    for attempt in (1, 2):
        with _connected(spec) as sock:
            try:
                send(sock, kind, payload)
            except (BrokenPipeError, ConnectionResetError):
                if attempt == 2:
                    raise
                time.sleep(1.5)  # let the exiting worker remove its socket
                continue
            return receive(sock)
    raise AssertionError("unreachable")


def identify(spec: WorkerSpec) -> tuple[str, int]:
    """The node's client id and training examples, as its worker says."""
    answer = json.loads(ask(spec, IDENTIFY, b""))
    return str(answer["client"]), int(answer["train"])


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


def _log_tail(spec: WorkerSpec, chars: int = 3000) -> str:
    path = spec.log_path
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _start(spec: WorkerSpec) -> socket.socket:
    """Start the worker (one at a time per node: a lock in its state folder) and connect."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    log = spec.log_path
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
                raise WorkerError(
                    f"the node's fedllm worker exited at start; its log ends:\n{_log_tail(spec)}"
                )
            time.sleep(0.2)
        process.kill()
        raise WorkerError(f"the node's fedllm worker did not listen within {START_S:.0f} s")
