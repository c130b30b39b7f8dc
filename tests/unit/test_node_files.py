"""What a node keeps from the other users of its machine: its state folder and files
(0700 and 0600 whatever the umask, no following a planted link), the worker's socket (in
a private folder, checked before use; each side checks the other's user), and no pile
of stale sockets."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedllm.deploy import link, worker
from fedllm.deploy.link import (
    CLIENT_FAILED,
    HEADER,
    NOT_STARTED,
    SocketFolderError,
    WorkerError,
    WorkerSpec,
    identify,
    peer_credentials,
    private_socket_dir,
    remove_stale_sockets,
    socket_dir,
)
from fedllm.deploy.worker import listen, node_answer, serve
from fedllm.message import Message

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def short() -> Iterator[Path]:
    """A short folder under the system temp folder (pytest's ``tmp_path`` is too long for
    a Unix socket path)."""
    folder = Path(tempfile.mkdtemp(prefix="fn-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def spec(tmp_path: Path, short: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerSpec:
    """A worker whose state is in ``tmp_path`` (too long a path: its socket goes to the
    user's private folder, under ``short`` as the temp folder)."""
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(short))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return WorkerSpec("seed = 1\n", {"state-dir": str(tmp_path / "state")})


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker command that exits at once: ``_start`` writes its files, then says the
    worker did not start."""
    monkeypatch.setattr(sys, "executable", "false")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def serving(spec: WorkerSpec, handler_calls: list[str], idle_s: float = 2.0) -> threading.Thread:
    """A worker for ``spec`` in a thread, answering identity as ("org-a", 1)."""

    def handler(client: str, phase: str, message: Message) -> Message:
        handler_calls.append(phase)
        return message

    private_socket_dir(spec.state_dir)
    server = listen(spec.socket_path)
    answer = node_answer("org-a", 1, handler)
    thread = threading.Thread(
        target=serve, args=(server, spec.socket_path, answer, os.getpid(), idle_s)
    )
    thread.start()
    return thread


def stale_socket(path: Path) -> Path:
    """A socket file no one listens on (its worker was killed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    return path


def test_every_file_and_folder_the_node_writes_is_private_whatever_the_umask(
    spec: WorkerSpec, umask: int, no_worker: None
) -> None:
    state = spec.state_dir
    state.mkdir()
    state.chmod(0o755)  # an existing state folder, as earlier versions made it
    (state / "worker.lock").touch()
    (state / "worker.lock").chmod(0o644)
    with pytest.raises(WorkerError, match=f"^{NOT_STARTED}$"):
        identify(spec)
    assert mode(state) == 0o700
    for name in ("worker.lock", f"worker-{spec.key}.json", f"worker-{spec.key}.log"):
        assert mode(state / name) == 0o600, name
    assert mode(state / "clientapp.log") == 0o600
    assert mode(spec.socket_path.parent) == 0o700


def test_the_worker_s_socket_is_mode_0600_whatever_the_umask(spec: WorkerSpec, umask: int) -> None:
    calls: list[str] = []
    thread = serving(spec, calls, idle_s=0.5)
    assert mode(spec.socket_path) == 0o600 and stat.S_ISSOCK(spec.socket_path.lstat().st_mode)
    thread.join(timeout=30)
    assert not spec.socket_path.exists()


def test_a_link_planted_where_a_node_file_goes_is_not_followed(
    spec: WorkerSpec, tmp_path: Path, no_worker: None
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("theirs\n")
    spec.state_dir.mkdir()
    spec.log_path.symlink_to(victim)
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        identify(spec)
    assert victim.read_text() == "theirs\n" and mode(victim) != 0o600
    assert "Too many levels of symbolic links" in (spec.state_dir / "clientapp.log").read_text()


def test_the_socket_lies_in_the_state_folder_where_the_path_allows_and_in_a_private_one_else(
    spec: WorkerSpec, short: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = short / "s"
    state.mkdir()
    (state / "sockets").mkdir()
    (state / "sockets").chmod(0o755)  # ours, too open: tightened
    assert private_socket_dir(state) == socket_dir(state) == state.absolute() / "sockets"
    assert mode(state) == mode(state / "sockets") == 0o700
    long = spec.state_dir  # under pytest's tmp_path: too long
    assert socket_dir(long) == short / f"fedllm-{os.getuid()}"
    assert private_socket_dir(long) == short / f"fedllm-{os.getuid()}"
    assert mode(short / f"fedllm-{os.getuid()}") == 0o700 and mode(long) == 0o700
    assert len(os.fsencode(spec.socket_path)) <= link.SOCKET_PATH_MAX
    runtime = short / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert private_socket_dir(long) == runtime / "fedllm" and mode(runtime / "fedllm") == 0o700


@pytest.mark.parametrize("planted", ["link", "file", "open", "theirs"])
def test_a_private_socket_folder_that_fails_a_check_is_never_used(
    spec: WorkerSpec, short: Path, planted: str
) -> None:
    folder = short / f"fedllm-{os.getuid()}"
    elsewhere = short / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    problem = {
        "link": "is a symbolic link",
        "file": "is not a folder",
        "open": "has mode 0o777, not 0o700",
        "theirs": f"belongs to uid {NOBODY}, not this user",
    }[planted]
    if planted == "link":
        folder.symlink_to(elsewhere)
    elif planted == "file":
        folder.write_text("")
    else:
        folder.mkdir()
        folder.chmod(0o777)
        if planted == "theirs":
            if os.getuid() != 0:
                pytest.skip("needs root to give a folder to another user")
            folder.chmod(0o700)
            os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(SocketFolderError, match=problem):
        private_socket_dir(spec.state_dir)
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        identify(spec)  # refused before any connection or start
    assert remove_stale_sockets(spec.state_dir) == 0
    assert list(elsewhere.iterdir()) == []
    assert not (spec.state_dir / f"worker-{spec.key}.json").exists()
    assert problem in (spec.state_dir / "clientapp.log").read_text()


def test_stale_sockets_are_swept_and_a_serving_worker_is_not_disturbed(
    spec: WorkerSpec, short: Path
) -> None:
    calls: list[str] = []
    thread = serving(spec, calls, idle_s=3.0)
    folder = spec.socket_path.parent
    stale = stale_socket(folder / "worker-00000000000000000000.sock")
    plain = folder / "worker-11111111111111111111.sock"
    plain.write_text("")  # not a socket: not the sweep's business
    assert remove_stale_sockets(spec.state_dir) == 1
    assert not stale.exists() and plain.exists() and spec.socket_path.exists()
    assert identify(spec) == ("org-a", 1)  # the sweep's probe did not break it
    assert remove_stale_sockets(short / "nothing-here") == 0
    thread.join(timeout=30)
    assert remove_stale_sockets(spec.state_dir) == 0  # the worker removed its own


def test_this_user_s_stale_sockets_of_the_old_naming_are_swept_on_start(
    spec: WorkerSpec, short: Path, no_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "_old_swept", [])
    stale = stale_socket(short / "fedllm-worker-0123456789abcdef0123.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(short / "fedllm-worker-live.sock"))
    live.listen(1)
    plain = short / "fedllm-worker-plain.sock"
    plain.write_text("")
    theirs = stale_socket(short / "fedllm-worker-theirs.sock")
    if os.getuid() == 0:
        os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(WorkerError, match=f"^{NOT_STARTED}$"):
        identify(spec)
    live.close()
    assert not stale.exists() and plain.exists()
    assert theirs.exists() == (os.getuid() == 0)  # another user's is left alone
    assert (short / "fedllm-worker-live.sock").exists()


def test_peer_credentials_name_the_process_at_the_other_end() -> None:
    one, other = socket.socketpair(socket.AF_UNIX)
    with one, other:
        assert peer_credentials(one) == (os.getpid(), os.getuid(), os.getgid())


def test_the_client_app_refuses_a_listener_of_another_user(
    spec: WorkerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    thread = serving(spec, calls)
    other = os.getuid() + 1
    monkeypatch.setattr(link, "peer_credentials", lambda sock: (4242, other, 0))
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        identify(spec)
    thread.join(timeout=30)
    assert calls == []
    assert f"process 4242 of uid {other}" in (spec.state_dir / "clientapp.log").read_text()


def test_the_worker_drops_a_connection_from_another_user(
    spec: WorkerSpec, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    thread = serving(spec, calls, idle_s=3.0)
    other = os.getuid() + 1
    with monkeypatch.context() as patched:
        patched.setattr(worker, "peer_credentials", lambda sock: (4242, other, 0))
        with pytest.raises(WorkerError):  # closed unanswered
            identify(spec)
        assert f"dropped a connection from process 4242 of uid {other}" in caplog.text
    assert identify(spec) == ("org-a", 1)  # this user's connections are answered
    thread.join(timeout=30)


def as_nobody(act: str, path: Path) -> int:
    """Fork a child that becomes uid ``NOBODY`` and, at ``path``, either listens for a
    while (``act="listen"``; its pid is returned once it listens) or asks a worker
    (``act="ask"``: returned once its request is sent; it exits 0 if the worker closed
    without answering, 1 otherwise)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then _exit
        code = 2
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if act == "listen":
                sock.bind(str(path))
                sock.listen(1)
                os.write(ready_w, b"x")
                time.sleep(30)
            else:
                sock.connect(str(path))
                sock.sendall(HEADER.pack(0, 0))
                os.write(ready_w, b"x")  # queued: the worker takes it whenever it serves
                sock.settimeout(20)
                try:
                    code = 0 if sock.recv(1) == b"" else 1
                except ConnectionResetError:  # closed with the request unread
                    code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"  # it listens, or its request waits in the backlog
    os.close(ready_r)
    return pid


@ROOT_ONLY
def test_the_checks_hold_against_a_real_other_user(short: Path) -> None:
    shared = short / "shared"  # an open folder, where another user can listen or connect
    shared.mkdir()
    for folder in (short, shared):
        folder.chmod(0o777)
    theirs = shared / "theirs.sock"
    listener = as_nobody("listen", theirs)
    try:
        with pytest.raises(PermissionError, match=f"uid {NOBODY}, not this user"):
            link._connect(theirs)
    finally:
        os.kill(listener, 9)
        os.waitpid(listener, 0)
    ours = shared / "ours.sock"
    server = listen(ours)
    ours.chmod(0o666)
    asker = as_nobody("ask", ours)
    calls: list[str] = []

    def handler(client: str, phase: str, message: Message) -> Message:
        calls.append(phase)
        return message

    answer = node_answer("org-a", 1, handler)
    thread = threading.Thread(target=serve, args=(server, ours, answer, os.getpid(), 1.0))
    thread.start()
    _, status = os.waitpid(asker, 0)
    thread.join(timeout=30)
    assert os.waitstatus_to_exitcode(status) == 0 and calls == []
