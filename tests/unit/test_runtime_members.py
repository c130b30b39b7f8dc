"""A run on a remote SuperLink names the federation's members and speaks TLS, or says
it is insecure on purpose; the settings are refused where they cannot apply."""

from __future__ import annotations

import pytest

from fedllm.config import ConfigError
from fedllm.deploy.launch import flower_nodes
from tests.support.runs import tiny_config

FLOWER = ("runtime.engine='flower'", "data.num_clients=2")
MEMBERS = "runtime.clients=['org-a', 'org-b']"


def test_a_remote_superlink_needs_members() -> None:
    with pytest.raises(ConfigError, match=r"say who the federation's members are"):
        tiny_config(*FLOWER, "runtime.superlink='fl.example.org:9092'", "runtime.insecure=true")
    config = tiny_config(*FLOWER, "runtime.superlink='127.0.0.1:9092'", MEMBERS)
    assert config.runtime.clients == ["org-a", "org-b"]


def test_plaintext_to_another_machine_needs_runtime_insecure() -> None:
    remote = (*FLOWER, "runtime.superlink='10.0.0.5:9092'", MEMBERS)
    with pytest.raises(ConfigError, match=r"plaintext across the network.*runtime.insecure"):
        tiny_config(*remote)
    assert tiny_config(*remote, "runtime.insecure=true").runtime.insecure
    for loopback in ("127.0.0.1:9092", "localhost:9092", "[::1]:9092"):
        tiny_config(*FLOWER, f"runtime.superlink='{loopback}'", MEMBERS)  # no error


def test_member_settings_that_cannot_apply_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"remove runtime.clients"):
        tiny_config(*FLOWER, MEMBERS, "runtime.roster='roster.toml'")
    with pytest.raises(ConfigError, match=r"distinct, non-empty client names"):
        tiny_config(*FLOWER, "runtime.clients=['org-a', 'org-a']")
    with pytest.raises(ConfigError, match=r"only applies with runtime.engine = 'flower'"):
        tiny_config("runtime.roster='roster.toml'")
    with pytest.raises(ConfigError, match=r"only applies with runtime.engine = 'flower'"):
        tiny_config("runtime.insecure=true")


def test_the_nodes_waited_for_are_the_members() -> None:
    assert flower_nodes(tiny_config(*FLOWER)) == 2
    three = tiny_config(*FLOWER, "runtime.clients=['a', 'b', 'c']")
    assert flower_nodes(three) == 3
