"""Data built in a forked child: the same result, the same errors, a clear one if it dies."""

from __future__ import annotations

import os
import signal

import pytest

from fedllm.data.apart import IN_PROCESS_ENV, DataBuildError, built_apart, can_fork
from fedllm.data.sources import DataError

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
