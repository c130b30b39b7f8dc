"""The ``[attack]`` section: who is malicious, and the errors of a bad section."""

from __future__ import annotations

import pytest

from fedllm.config import ConfigError
from fedllm.security.attacks.settings import AttackConfig
from fedllm.security.attacks.targets import malicious_clients
from tests.support.runs import tiny_config

CLIENTS = [f"c{i:02d}" for i in range(10)]


@pytest.mark.parametrize(
    ("fraction", "count"), [(0.0, 0), (0.1, 1), (0.25, 2), (0.3, 3), (1.0, 10)]
)
def test_a_fraction_draws_that_share_of_the_clients(fraction: float, count: int) -> None:
    chosen = malicious_clients(AttackConfig(fraction=fraction), CLIENTS, seed=3)
    assert len(chosen) == count
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(CLIENTS)
    assert chosen == malicious_clients(AttackConfig(fraction=fraction), CLIENTS[::-1], seed=3)


def test_the_draw_depends_on_the_seed_and_grows_with_the_fraction() -> None:
    draws = {tuple(malicious_clients(AttackConfig(fraction=0.3), CLIENTS, s)) for s in range(8)}
    assert len(draws) > 1
    small = malicious_clients(AttackConfig(fraction=0.1), CLIENTS, seed=5)
    large = malicious_clients(AttackConfig(fraction=0.3), CLIENTS, seed=5)
    assert set(small) <= set(large)  # one permutation, a longer prefix


def test_named_clients_are_those_and_unknown_ones_are_refused() -> None:
    assert malicious_clients(AttackConfig(clients=["c03", "c01"]), CLIENTS, 0) == ["c01", "c03"]
    with pytest.raises(ConfigError, match=r"attack.clients names unknown client\(s\) \['zz'\]"):
        malicious_clients(AttackConfig(clients=["zz"]), CLIENTS, 0)


def test_the_section_refuses_both_ways_of_choosing_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="attack.clients and attack.fraction"):
        tiny_config("attack.fraction=0.2", "attack.clients=['coding']")
    with pytest.raises(ConfigError, match="attack.update = 'nope' is not a registered update"):
        tiny_config("attack.update=nope")
    with pytest.raises(ConfigError, match=r"\[attack.nope\]"):
        tiny_config("attack.nope.x=1")


def test_attack_tables_are_gathered_as_settings() -> None:
    section = AttackConfig.model_validate({"fraction": 0.1, "x": {"a": 1}})
    assert section.settings == {"x": {"a": 1}}
    assert not section.on
