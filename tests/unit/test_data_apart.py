"""Data built in a forked child: the same result, the same errors, a clear one if it dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fedllm.data.apart import IN_PROCESS_ENV, DataBuildError, built_apart, can_fork, start_apart
from fedllm.data.sources import DataError

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not can_fork(), reason="no fork on this platform")


def test_the_result_comes_from_another_process() -> None:
    parent = os.getpid()
    assert built_apart(lambda: (os.getpid(), [1, 2])) != (parent, [1, 2])
    assert built_apart(lambda: [1, 2]) == [1, 2]


def test_an_error_in_the_build_is_raised_as_itself_with_the_childs_traceback() -> None:
    def bad() -> None:
        raise DataError("data.source = 'x' is not a corpus")

    with pytest.raises(DataError, match="'x' is not a corpus") as caught:
        built_apart(bad)
    assert "raised while building the data in a child process" in caught.value.__notes__[0]
    assert "in bad" in caught.value.__notes__[0]


def test_a_child_that_dies_is_reported_with_its_exit_code() -> None:
    with pytest.raises(DataBuildError, match=f"exited with code -{int(signal.SIGKILL)}"):
        built_apart(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_the_environment_switch_builds_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    assert built_apart(os.getpid) == os.getpid()


def test_federated_data_built_apart_equals_the_in_process_build(
    data_tokenizer: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedllm.config import DataConfig
    from fedllm.data import build_federated_data

    cfg = DataConfig(source="chitchat", num_clients=3, max_examples_per_client=40)
    apart = built_apart(lambda: build_federated_data(cfg, data_tokenizer, 0))
    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    here = build_federated_data(cfg, data_tokenizer, 0)
    assert apart.clients.keys() == here.clients.keys()
    for cid, client in here.clients.items():
        assert apart.clients[cid].train == client.train
        assert apart.clients[cid].eval == client.eval
    assert apart.test == here.test and apart.summary() == here.summary()


def test_a_started_build_runs_while_the_caller_works(tmp_path: Path) -> None:
    flag = tmp_path / "caller-went-on"

    def build() -> bool:
        deadline = time.monotonic() + 20
        while not flag.exists():  # only finishes once the caller has gone on
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    pending = start_apart(build)
    flag.touch()
    assert pending.result() is True


def test_a_build_left_unused_is_stopped_when_its_context_closes() -> None:
    with start_apart(lambda: time.sleep(60)) as pending:
        child = pending._child
        assert child is not None and child.is_alive()
    assert not child.is_alive()


def test_a_taken_result_survives_the_context() -> None:
    with start_apart(lambda: [3, 4]) as pending:
        assert pending.result() == [3, 4]
    assert pending.result() == [3, 4]


def test_run_data_started_early_equals_the_in_process_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tokenizer comes back from the child and tokenizes as one loaded here does."""
    from fedllm.config import load_config
    from fedllm.federation.early import build_run_data, start_run_data

    config = load_config(ROOT / "configs" / "tiny.toml")
    with start_run_data(config) as pending:
        early = pending.result()
    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    here = build_run_data(config)
    text = "Hello, how are you today?"
    assert early.tokenizer(text)["input_ids"] == here.tokenizer(text)["input_ids"]
    assert early.tokenizer.pad_token_id == here.tokenizer.pad_token_id
    assert early.data.summary() == here.data.summary()
    for cid, client in here.data.clients.items():
        assert early.data.clients[cid].train == client.train


def test_a_cancelled_build_has_no_result() -> None:
    with start_apart(lambda: [5]) as pending:
        pass
    with pytest.raises(RuntimeError, match="cancelled"):
        pending.result()


def test_in_process_the_build_waits_until_its_result_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    calls: list[int] = []
    pending = start_apart(lambda: calls.append(1) or len(calls))
    assert calls == []  # the caller's quick checks come first, as without a child
    assert pending.result() == 1 and pending.result() == 1 and calls == [1]
