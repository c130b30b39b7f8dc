"""The node worker's socket protocol: framed requests answered one at a time, a failure
told as its category only (its traceback in the worker's log), an idle worker exits and
removes its socket, a start that fails says which way; the ClientApp that forwards to it
imports no torch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedllm.client.evaluate import EVALUATE
from fedllm.client.side import TRAIN
from fedllm.config import dump_config
from fedllm.deploy.errors import NodeRefusal
from fedllm.deploy.link import (
    CLIENT_FAILED,
    CONFIG_REFUSED,
    CRASHED,
    DATA_ERROR,
    FAILED,
    IDENTIFY,
    NOT_STARTED,
    PHASES,
    WorkerError,
    WorkerSpec,
    ask,
    identify,
    peer_credentials,
    private_socket_dir,
    receive,
    send,
)
from fedllm.deploy.node_app import forward, reported
from fedllm.deploy.worker import Answer, listen, node_answer, run_worker, serve
from fedllm.message import Message
from fedllm.wire import decode_message, encode_message
from tests.support.runs import tiny_config

MARKER = "ACME-CONFIDENTIAL-4711"
"""Private text of a node's, to look for where it must not be."""


def start_serving(spec: WorkerSpec, answer: Answer, idle_s: float = 30.0) -> threading.Thread:
    """A worker answering with ``answer`` in a thread, listening where ``spec``'s is."""
    private_socket_dir(spec.state_dir)
    path = spec.socket_path
    server = listen(path)
    thread = threading.Thread(target=serve, args=(server, path, answer, os.getpid(), idle_s))
    thread.start()
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerSpec]:
    """A worker whose state is in ``tmp_path`` and whose socket is in the user's private
    folder under a short temp folder (pytest's ``tmp_path`` is too long for a Unix socket
    path: the fallback of :func:`~fedllm.deploy.link.socket_dir`)."""
    sockets = tempfile.mkdtemp(prefix="fw-")
    monkeypatch.setattr(tempfile, "gettempdir", lambda: sockets)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield WorkerSpec("seed = 1\n", {"state-dir": str(tmp_path / "state")})
    shutil.rmtree(sockets, ignore_errors=True)


def test_requests_are_answered_in_order_and_tensors_round_trip(spec: WorkerSpec) -> None:
    seen: list[str] = []

    def handler(client: str, phase: str, message: Message) -> Message:
        seen.append(phase)
        return Message(arrays={"x": message.arrays["x"] * 2}, metrics={"n": float(len(seen))})

    thread = start_serving(spec, node_answer("org-a", 17, handler), idle_s=5.0)
    assert identify(spec) == ("org-a", 17)
    big = torch.arange(3_000_000, dtype=torch.float32)  # 12 MB: many socket reads
    for i, phase in enumerate((TRAIN, EVALUATE, TRAIN), start=1):
        reply = decode_message(ask(spec, phase, encode_message(Message(arrays={"x": big}))))
        assert torch.equal(reply.arrays["x"], big * 2) and reply.metrics == {"n": float(i)}
    assert seen == [TRAIN, EVALUATE, TRAIN]
    assert oct(spec.socket_path.stat().st_mode & 0o777) == oct(0o600)
    thread.join(timeout=30)  # idle for 5 s: it exits and removes its socket
    assert not thread.is_alive() and not spec.socket_path.exists()


def test_a_failing_client_side_comes_back_as_its_category_and_its_traceback_stays_on_the_node(
    spec: WorkerSpec, caplog: pytest.LogCaptureFixture
) -> None:
    def answer(phase: str, payload: bytes) -> bytes:
        raise ValueError("no such client here")

    # idle for 15 s: a loaded machine (the suite beside a benchmark) once took over 5 s
    # between the two requests, the worker had exited, and the second found none
    thread = start_serving(spec, answer, idle_s=15.0)
    with pytest.raises(WorkerError) as failed:
        ask(spec, TRAIN, b"")
    assert str(failed.value) == CLIENT_FAILED and failed.value.__cause__ is None
    # the worker survives a failed request and answers the next
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        ask(spec, EVALUATE, b"")
    thread.join(timeout=60)
    assert "ValueError: no such client here" in caplog.text  # the worker's log


def test_a_worker_that_dies_answering_is_told_as_crashed(spec: WorkerSpec) -> None:
    private_socket_dir(spec.state_dir)
    server = listen(spec.socket_path)

    def die_answering() -> None:
        conn, _ = server.accept()
        receive(conn)
        conn.close()  # as a worker killed (out of memory) mid-answer
        server.close()

    thread = threading.Thread(target=die_answering)
    thread.start()
    with pytest.raises(WorkerError) as died:
        ask(spec, TRAIN, b"x")
    thread.join(timeout=10)
    assert str(died.value) == CRASHED
    assert "stopped before answering train" in (spec.state_dir / "clientapp.log").read_text()


def test_a_worker_that_does_not_start_is_told_as_such_and_the_node_log_says_why(
    spec: WorkerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "false")  # exits 1 at once
    with pytest.raises(WorkerError, match=f"^{NOT_STARTED}$"):
        identify(spec)
    assert "exited at start (status 1)" in (spec.state_dir / "clientapp.log").read_text()


def test_a_worker_whose_node_cannot_build_tells_its_category_and_logs_why(
    spec: WorkerSpec, tmp_path: Path
) -> None:
    """``seed = 1`` names no node data: a real worker (a process) answers that the node
    refused the configuration; why is in its log, on the node. SIGTERM (a deployment's
    stop) ends it and its socket goes with it."""
    with pytest.raises(WorkerError) as refused:
        identify(spec)
    assert str(refused.value) == CONFIG_REFUSED
    log = (tmp_path / "state" / f"worker-{spec.key}.log").read_text()
    assert "names no data" in log and "Traceback" in log
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # it lingers a while
        probe.connect(str(spec.socket_path))
        peer = peer_credentials(probe)
    assert peer is not None and peer[1] == os.getuid()
    os.kill(peer[0], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while spec.socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spec.socket_path.exists()


def test_the_same_run_and_node_share_a_worker_and_others_do_not() -> None:
    a = WorkerSpec("seed = 1\n", {"partition-id": "0"})
    assert a.key == WorkerSpec("seed = 1\n", {"partition-id": "0"}).key
    assert a.key != WorkerSpec("seed = 2\n", {"partition-id": "0"}).key
    assert a.key != WorkerSpec("seed = 1\n", {"partition-id": "1"}).key
    assert len(str(a.socket_path)) < 100
    from fedllm.secure.he import parts as he
    from fedllm.secure.secagg import parts as secagg

    # the link names every client phase without importing them
    assert (IDENTIFY, TRAIN, EVALUATE, *secagg.PHASES, *he.PHASES) == PHASES


def test_the_forwarding_client_app_imports_no_torch() -> None:
    probe = "import sys, fedllm.deploy.node_app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def flower_reason(err: Exception) -> str:
    """The reason of the error reply Flower makes of a ClientApp's exception: what the
    server records in ``dropped[].reason`` (flwr 1.42, pinned below)."""
    return str(type(err)) + ":<'" + str(err) + "'>"


def test_flower_puts_the_exception_s_class_and_text_in_the_reason() -> None:
    import flwr.supernode.runtime.run_clientapp as clientapp

    source = Path(clientapp.__file__).read_text()
    assert """reason = str(type(ex)) + ":<'" + str(ex) + "'>\"""" in source


def write_chats(path: Path, bad_role: str | None = None) -> None:
    """Six chats; the 4th has the role ``bad_role`` if given (a malformed line)."""
    lines = []
    for i in range(6):
        role = bad_role if bad_role and i == 3 else "assistant"
        messages = [{"role": "user", "content": f"q{i}"}, {"role": role, "content": f"a{i}"}]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")


def test_a_malformed_line_in_a_node_s_data_reaches_the_server_as_a_data_error_only(
    spec: WorkerSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real node worker (in a thread), asked through the socket: the ClientApp's error,
    and so Flower's reason, says "data error on the node"; the file's name and the
    offending text stay in the worker's log."""
    data = tmp_path / "org-secret-clinic.jsonl"
    write_chats(data, bad_role=MARKER)
    run_config = {"config": dump_config(tiny_config())}
    node_config = {"data": str(data), "state-dir": str(spec.state_dir)}
    node = WorkerSpec(run_config["config"], node_config)
    private_socket_dir(node.state_dir)
    worker = threading.Thread(
        target=run_worker, args=(node, node.socket_path, os.getpid()), kwargs={"failed_idle_s": 3}
    )
    worker.start()
    while worker.is_alive() and not node.socket_path.exists():
        time.sleep(0.02)
    with pytest.raises(WorkerError) as at_identify:
        identify(node)
    with pytest.raises(WorkerError) as at_train:
        reported(forward)(node_config, run_config, TRAIN, b"")
    worker.join(timeout=60)
    for err in (at_identify.value, at_train.value):
        reason = flower_reason(err)
        assert DATA_ERROR in reason and MARKER not in reason and "clinic" not in reason
        assert reason == f"<class 'fedllm.deploy.link.WorkerError'>:<'{DATA_ERROR}'>"
    assert MARKER in caplog.text and "org-secret-clinic.jsonl, line 4" in caplog.text
    assert MARKER not in (node.state_dir / "clientapp.log").read_text()


def test_a_node_refusal_reaches_the_server_as_it_is_cut_to_300_characters(
    spec: WorkerSpec,
) -> None:
    rule = "node policy: max-rounds = 5, the server asked for round 6"

    def handler(client: str, phase: str, message: Message) -> Message:
        raise NodeRefusal(rule if phase == TRAIN else "node policy: " + "x" * 1000)

    run_config, node_config = {"config": spec.config}, {"partition-id": "0", **spec.node}
    node = WorkerSpec(spec.config, node_config)  # the worker node_app's forward finds
    thread = start_serving(node, node_answer("org-a", 4, handler), idle_s=3.0)
    payload = encode_message(Message())
    with pytest.raises(NodeRefusal) as refused:
        ask(node, TRAIN, payload)
    assert str(refused.value) == rule
    with pytest.raises(NodeRefusal) as cut:
        ask(node, EVALUATE, payload)
    assert len(str(cut.value)) == 300 and str(cut.value).startswith("node policy: xxx")
    with pytest.raises(NodeRefusal) as refused:
        reported(forward)(node_config, run_config, TRAIN, payload)
    assert flower_reason(refused.value) == f"<class 'fedllm.deploy.errors.NodeRefusal'>:<'{rule}'>"
    thread.join(timeout=30)


def test_a_failed_reply_that_is_not_a_category_is_told_as_the_client_side_failing(
    spec: WorkerSpec,
) -> None:
    """An old worker (or a bug) sending its traceback: the ClientApp passes none of it."""
    private_socket_dir(spec.state_dir)
    server = listen(spec.socket_path)

    def answer_with_a_traceback() -> None:
        conn, _ = server.accept()
        with conn:
            receive(conn)
            send(conn, FAILED, f"Traceback: ... role {MARKER!r}".encode())
        server.close()

    thread = threading.Thread(target=answer_with_a_traceback)
    thread.start()
    with pytest.raises(WorkerError) as failed:
        ask(spec, TRAIN, b"")
    thread.join(timeout=10)
    assert str(failed.value) == CLIENT_FAILED


def test_the_client_app_s_own_failures_are_categories_and_their_detail_stays_on_the_node(
    spec: WorkerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = str(spec.state_dir)
    bad_name = {"data": "chats.jsonl", "client": f"../{MARKER}", "state-dir": state}
    with pytest.raises(WorkerError) as refused:
        reported(forward)(bad_name, {"config": spec.config}, TRAIN, b"")
    assert str(refused.value) == CONFIG_REFUSED and refused.value.__context__ is None

    def leaky(*args: object) -> bytes:
        raise OSError(f"/srv/{MARKER}/chats.jsonl: disk full")

    monkeypatch.setattr("fedllm.deploy.node_app.ask", leaky)
    node = {"partition-id": "0", "state-dir": state}
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        reported(forward)(node, {"config": spec.config}, TRAIN, b"")

    def worded(*args: object) -> bytes:
        raise WorkerError(f"the worker failed: {MARKER}")  # not a category

    monkeypatch.setattr("fedllm.deploy.node_app.ask", worded)
    with pytest.raises(WorkerError, match=f"^{CLIENT_FAILED}$"):
        reported(forward)(node, {"config": spec.config}, TRAIN, b"")
    log = (spec.state_dir / "clientapp.log").read_text()
    assert f"client = '../{MARKER}'" in log and "disk full" in log
