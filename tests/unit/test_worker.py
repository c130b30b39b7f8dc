"""The node worker's socket protocol: framed requests answered one at a time, errors as
text, an idle worker exits and removes its socket, a start that fails says why; the
ClientApp that forwards to it imports no torch."""

from __future__ import annotations

import os
import shutil
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
from fedllm.deploy import link
from fedllm.deploy.link import IDENTIFY, PHASES, WorkerError, WorkerSpec, ask, identify
from fedllm.deploy.worker import Answer, listen, node_answer, serve
from fedllm.message import Message
from fedllm.wire import decode_message, encode_message


def start_serving(path: Path, answer: Answer, idle_s: float = 30.0) -> threading.Thread:
    server = listen(path)
    thread = threading.Thread(target=serve, args=(server, path, answer, os.getpid(), idle_s))
    thread.start()
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerSpec]:
    """A worker whose state is in ``tmp_path`` and whose socket is in a private folder: a
    short one under the system temp folder (pytest-xdist's ``tmp_path`` is too long for a
    Unix socket path)."""
    sockets = tempfile.mkdtemp(prefix="fw-")
    monkeypatch.setattr(link.tempfile, "gettempdir", lambda: sockets)
    yield WorkerSpec("seed = 1\n", {"state-dir": str(tmp_path / "state")})
    shutil.rmtree(sockets, ignore_errors=True)


def test_requests_are_answered_in_order_and_tensors_round_trip(spec: WorkerSpec) -> None:
    seen: list[str] = []

    def handler(client: str, phase: str, message: Message) -> Message:
        seen.append(phase)
        return Message(arrays={"x": message.arrays["x"] * 2}, metrics={"n": float(len(seen))})

    thread = start_serving(spec.socket_path, node_answer("org-a", 17, handler), idle_s=5.0)
    assert identify(spec) == ("org-a", 17)
    big = torch.arange(3_000_000, dtype=torch.float32)  # 12 MB: many socket reads
    for i, phase in enumerate((TRAIN, EVALUATE, TRAIN), start=1):
        reply = decode_message(ask(spec, phase, encode_message(Message(arrays={"x": big}))))
        assert torch.equal(reply.arrays["x"], big * 2) and reply.metrics == {"n": float(i)}
    assert seen == [TRAIN, EVALUATE, TRAIN]
    assert oct(spec.socket_path.stat().st_mode & 0o777) == oct(0o600)
    thread.join(timeout=30)  # idle for 5 s: it exits and removes its socket
    assert not thread.is_alive() and not spec.socket_path.exists()


def test_a_failing_client_side_comes_back_as_an_error_with_its_traceback(spec: WorkerSpec) -> None:

    def answer(phase: str, payload: bytes) -> bytes:
        raise ValueError("no such client here")

    # idle for 15 s: a loaded machine (the suite beside a benchmark) once took over 5 s
    # between the two requests, the worker had exited, and the second found none
    thread = start_serving(spec.socket_path, answer, idle_s=15.0)
    with pytest.raises(WorkerError, match="ValueError: no such client here"):
        ask(spec, TRAIN, b"")
    # the worker survives a failed request and answers the next
    with pytest.raises(WorkerError, match="no such client here"):
        ask(spec, EVALUATE, b"")
    thread.join(timeout=60)


def test_a_worker_that_cannot_start_says_why(spec: WorkerSpec, tmp_path: Path) -> None:
    """``seed = 1`` names no node data: the worker exits and says so."""
    with pytest.raises(
        WorkerError, match="(?s)worker (exited at start|stopped before answering).*names no data"
    ):
        identify(spec)
    assert (tmp_path / "state" / f"worker-{spec.key}.log").exists()


def test_the_same_run_and_node_share_a_worker_and_others_do_not() -> None:
    a = WorkerSpec("seed = 1\n", {"partition-id": "0"})
    assert a.key == WorkerSpec("seed = 1\n", {"partition-id": "0"}).key
    assert a.key != WorkerSpec("seed = 2\n", {"partition-id": "0"}).key
    assert a.key != WorkerSpec("seed = 1\n", {"partition-id": "1"}).key
    assert len(str(a.socket_path)) < 100
    from fedllm.client import he, secagg

    # the link names every client phase without importing them
    assert (IDENTIFY, TRAIN, EVALUATE, *secagg.PHASES, *he.PHASES) == PHASES


def test_the_forwarding_client_app_imports_no_torch() -> None:
    probe = "import sys, fedllm.deploy.node_app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
