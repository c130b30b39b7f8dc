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
reply's is :data:`OK` (the reply's fedllm encoding), :data:`FAILED` (one of
:data:`CATEGORIES`, UTF-8: never the worker's traceback, which stays in its log) or
:data:`REFUSED` (a :class:`~fedllm.deploy.errors.NodeRefusal`'s message).

Who may talk to whom: the socket lies in a folder only this user may enter (mode 0700:
``sockets/`` in the node's state folder, or a private folder of the user's where that
path would be too long for a Unix socket: :func:`socket_dir`), and on Linux each side
checks the other's user (``SO_PEERCRED``): a ClientApp refuses a listener of another
user, a worker drops a connection from one. Where there is no ``SO_PEERCRED`` (not
Linux) the folder's mode is the only guard. Every file written here is mode 0600.

What reaches the server: Flower turns a ClientApp's exception into the error reply
the server records (its reason is ``str(type(err)) + ":<'" + str(err) + "'>"``), so
the exceptions raised here say a category of :data:`CATEGORIES` only, or a
NodeRefusal's message; the detail stays on the node, in the worker's log
(``worker-<key>.log``) and the ClientApp's (``clientapp.log``) in its state folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedllm.deploy.errors import NodeRefusal

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
``fedllm.secure.secagg.parts.PHASES``, ``fedllm.secure.he.parts.PHASES``: spelled out
here, which imports no torch)."""

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A client name a node may give (it names files in the node's state folder)."""

OK, FAILED, REFUSED = 0, 1, 2
HEADER = struct.Struct(">BQ")
IDLE_S = 900.0
"""A worker with no message for this long exits (seconds)."""
START_S = 1800.0
"""Longest a ClientApp waits for a worker it started to listen (seconds)."""

DATA_ERROR = "data error on the node"
CONFIG_REFUSED = "the node refused the run's configuration"
NOT_STARTED = "the node's fedllm worker did not start"
CRASHED = "the node's fedllm worker stopped (crashed)"
CLIENT_FAILED = "the node's client side failed"
CATEGORIES = (DATA_ERROR, CONFIG_REFUSED, NOT_STARTED, CRASHED, CLIENT_FAILED)
"""All a node's failure may tell the server (the text of the ClientApp's exception,
which Flower sends): never the node's data, paths or log text, which stay in its logs."""
REFUSAL_CHARS = 300
"""A :class:`~fedllm.deploy.errors.NodeRefusal`'s message reaches the server cut to
this many characters."""

SOCKETS = "sockets"
"""The worker sockets' folder in a node's state folder."""
SOCKET_PATH_MAX = 103
"""Longest Unix socket path used (bytes): Linux allows 107, macOS 103."""
CLIENTAPP_LOG = "clientapp.log"
"""The ClientApp's log in the node's state folder: the detail of its failures."""
OLD_SOCKETS = "fedllm-worker-*.sock"
"""The sockets of earlier versions, in the system's temp folder."""


class WorkerError(RuntimeError):
    """The worker did not start, or failed to answer: the message is one of
    :data:`CATEGORIES` (what the server may see), the detail is in the node's logs."""


class NodeConfigError(ValueError):
    """A node config that names no data, or a bad client name."""


class SocketFolderError(RuntimeError):
    """A folder for the worker's socket that is not this user's private folder."""


def category(text: str) -> str:
    """``text`` if it is one of :data:`CATEGORIES`, else :data:`CLIENT_FAILED`: what the
    server may be told of a failure said as ``text``."""
    return text if text in CATEGORIES else CLIENT_FAILED


def refusal(text: str) -> str:
    """A NodeRefusal's message as it may reach the server (at most :data:`REFUSAL_CHARS`)."""
    return text if len(text) <= REFUSAL_CHARS else text[: REFUSAL_CHARS - 3] + "..."


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


def node_state_dir(node_config: Mapping[str, object]) -> Path:
    """The node's state folder (``state-dir``; default ``fedllm-node-state``)."""
    return Path(str(node_config.get("state-dir", "fedllm-node-state")))


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
        """In the node's private socket folder (:func:`socket_dir`)."""
        return socket_dir(self.state_dir) / _socket_name(self.key)

    @property
    def log_path(self) -> Path:
        """The worker's output, in the node's state folder."""
        return self.state_dir / f"worker-{self.key}.log"

    @property
    def state_dir(self) -> Path:
        return node_state_dir(self.node)


def _socket_name(key: str) -> str:
    return f"worker-{key}.sock"


def socket_dir(state_dir: Path) -> Path:
    """Where the worker sockets of the node keeping its state in ``state_dir`` lie:
    ``sockets/`` there; where that would make a socket path too long for a Unix socket,
    the user's private folder, ``$XDG_RUNTIME_DIR/fedllm`` (else
    ``<tempdir>/fedllm-<uid>``). Nothing is created: :func:`private_socket_dir` does."""
    own = Path(os.path.abspath(state_dir)) / SOCKETS
    if len(os.fsencode(own / _socket_name("0" * 20))) <= SOCKET_PATH_MAX:
        return own
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "fedllm"
    return Path(tempfile.gettempdir()) / f"fedllm-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path``, a folder created mode 0700 whatever the umask, or tightened to 0700 if it
    exists and is this user's (another user's is left as it is)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def private_socket_dir(state_dir: Path) -> Path:
    """:func:`socket_dir`, made (mode 0700, whatever the umask) and checked: a folder, not a
    symbolic link, this user's, mode 0700. One in the state folder is tightened to 0700;
    the user's shared one is never used if it fails a check. The state folder is made
    private too (:func:`private_dir`).

    Raises:
        SocketFolderError: naming the problem and the folder.
    """
    private_dir(state_dir)
    folder = socket_dir(state_dir)
    in_state = folder.parent == Path(os.path.abspath(state_dir))
    if not in_state and len(os.fsencode(folder / _socket_name("0" * 20))) > SOCKET_PATH_MAX:
        raise SocketFolderError(
            f"no folder for the worker's socket: {folder} is too long for a Unix socket "
            f"path; set XDG_RUNTIME_DIR or TMPDIR to a shorter folder"
        )
    try:
        folder.mkdir(mode=0o700)
        folder.chmod(0o700)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise SocketFolderError(
            f"no folder for the worker's socket: {folder.parent} does not exist"
        ) from None
    _check_socket_dir(folder, tighten=in_state)
    return folder


def _check_socket_dir(folder: Path, tighten: bool = False) -> None:
    """Raise :class:`SocketFolderError` unless ``folder`` is this user's private folder
    (with ``tighten``, one of mode other than 0700 is set to it instead)."""
    info = folder.lstat()
    mode, uid = stat.S_IMODE(info.st_mode), os.getuid()
    problem = ""
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif info.st_uid != uid:
        problem = f"belongs to uid {info.st_uid}, not this user (uid {uid})"
    elif mode != 0o700 and tighten:
        folder.chmod(0o700)
    elif mode != 0o700:
        problem = f"has mode {mode:#o}, not 0o700"
    if problem:
        raise SocketFolderError(
            f"the worker socket folder {folder} {problem}: it is not used; remove it (or "
            "make it a folder of this user's with mode 0700)"
        )


def private_file(path: Path, flags: int) -> int:
    """A descriptor of ``path`` opened with ``flags``, created mode 0600 whatever the
    umask (an existing file is tightened to 0600).

    Raises:
        OSError: ``path`` is a symbolic link (``O_NOFOLLOW``), or not this user's.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def note(state_dir: Path, text: str) -> None:
    """Append ``text`` (after the time and this process's id) to the ClientApp's log in
    the node's state folder (mode 0600): the detail of a failure whose category alone
    goes to the server. Never raises: a log that cannot be written gets it on stderr
    (the SuperNode's output, on the node too)."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {text.rstrip()}\n"
    try:
        fd = private_file(private_dir(state_dir) / CLIENTAPP_LOG, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "a") as log:
            log.write(line)
    except OSError:
        sys.stderr.write(line)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (for a
    connecting side: the process that listens); ``None`` where the system has no
    ``SO_PEERCRED`` (not Linux), where the socket folder's mode 0700 is the only guard."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    return pid, uid, gid


def remove_stale_sockets(state_dir: Path) -> int:
    """Remove the worker sockets no one listens on any more from the socket folder of the
    node keeping its state in ``state_dir`` (:func:`socket_dir`; a stopped deployment
    kills its workers before they remove theirs); how many were removed.

    Only this user's sockets are touched, and only in a folder that passes the checks of
    :func:`private_socket_dir` (a missing one, or one that fails: none).
    """
    folder = socket_dir(state_dir)
    try:
        _check_socket_dir(folder)
    except (OSError, SocketFolderError):
        return 0
    return sum(_remove_if_stale(path) for path in sorted(folder.glob(_socket_name("*"))))


def _remove_if_stale(path: Path) -> bool:
    """Remove ``path`` if it is a socket of this user's that no one listens on."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid() or _listening(path):
        return False
    path.unlink(missing_ok=True)
    return True


def _listening(path: Path) -> bool:
    """Whether someone listens on ``path`` (a full backlog, or any doubt, counts as yes)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


_old_swept: list[bool] = []


def _remove_old_sockets() -> int:
    """Once per process: remove this user's stale sockets of earlier versions
    (:data:`OLD_SOCKETS` in the system's temp folder); how many."""
    if _old_swept:
        return 0
    _old_swept.append(True)
    old = sorted(Path(tempfile.gettempdir()).glob(OLD_SOCKETS))
    return sum(_remove_if_stale(path) for path in old)


def send(sock: socket.socket, kind: int, payload: bytes) -> None:
    sock.sendall(HEADER.pack(kind, len(payload)))
    if payload:  # an empty send to a peer that has answered and closed is a broken pipe
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
        WorkerError: the worker did not start, stopped, or failed: its message is one of
            :data:`CATEGORIES`; the detail is in the node's logs (:func:`note`, the
            worker's log).
        NodeRefusal: the node's own rules refused the message (their message, cut to
            :data:`REFUSAL_CHARS`).
    """
    try:
        kind, reply = _exchange(spec, PHASES.index(phase), payload)
    except WorkerError:
        raise
    except ConnectionError as err:  # it died building or answering
        note(
            spec.state_dir,
            f"the fedllm worker stopped before answering {phase} ({err}); its log: {spec.log_path}",
        )
        raise WorkerError(CRASHED) from None
    except Exception:
        note(
            spec.state_dir,
            f"handing {phase} to the fedllm worker failed:\n{traceback.format_exc()}",
        )
        raise WorkerError(CLIENT_FAILED) from None
    if kind == REFUSED:
        raise NodeRefusal(refusal(reply.decode(errors="replace")))
    if kind != OK:
        failed = category(reply.decode(errors="replace"))
        note(spec.state_dir, f"the fedllm worker failed {phase}: {failed}; see {spec.log_path}")
        raise WorkerError(failed)
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
    private_socket_dir(spec.state_dir)
    sock = _connect(spec.socket_path)
    if sock is None:
        sock = _start(spec)
    try:
        yield sock
    finally:
        sock.close()


def _connect(path: Path) -> socket.socket | None:
    """A connection to the worker listening on ``path``; ``None`` if no one listens.

    Raises:
        PermissionError: another user listens there (checked where ``SO_PEERCRED`` is).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    peer = peer_credentials(sock)
    if peer is not None and peer[1] != os.getuid():
        sock.close()
        raise PermissionError(
            f"refused the listener on {path}: process {peer[0]} of uid {peer[1]}, not this "
            f"user (uid {os.getuid()})"
        )
    return sock


def _start(spec: WorkerSpec) -> socket.socket:
    """Start the worker (one at a time per node: a lock in its state folder) and connect.

    Raises:
        WorkerError: :data:`NOT_STARTED` (why: in the ClientApp's log).
    """
    path = spec.socket_path
    lock = private_file(private_dir(spec.state_dir) / "worker.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)  # another ClientApp may have started it
        if sock is not None:
            return sock
        remove_stale_sockets(spec.state_dir)
        _remove_old_sockets()
        spec_file = spec.state_dir / f"worker-{spec.key}.json"
        raw = {"config": spec.config, "node": dict(spec.node), "socket": str(path)}
        with os.fdopen(private_file(spec_file, os.O_WRONLY | os.O_TRUNC), "w") as out:
            json.dump(raw, out)
        log = private_file(spec.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedllm.deploy.worker", str(spec_file), str(os.getppid())],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            if process.poll() is not None:
                note(
                    spec.state_dir,
                    f"the fedllm worker exited at start (status {process.returncode}); "
                    f"its log: {spec.log_path}",
                )
                raise WorkerError(NOT_STARTED)
            time.sleep(0.2)
        process.kill()
        note(
            spec.state_dir,
            f"the fedllm worker did not listen on {path} within {START_S:.0f} s; "
            f"its log: {spec.log_path}",
        )
        raise WorkerError(NOT_STARTED)
    finally:
        os.close(lock)
