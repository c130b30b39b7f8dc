"""The run-long learning-rate schedule's rules and its per-client step count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.algorithms.run_schedule.client import RunPosition
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext
from fedllm.client.store import ClientStateStore
from fedllm.client.train import schedule_position
from fedllm.components import active_algorithms
from fedllm.config import ConfigError
from tests.support.runs import tiny_config

RUN = "client.lr_schedule_span='run'"


def active(*overrides: str) -> list[str]:
    return [name for name, _ in active_algorithms(tiny_config(*overrides))]


def test_it_is_on_only_with_the_run_span() -> None:
    assert "run_schedule" not in active("client.warmup_steps=2")
    assert "run_schedule" in active(RUN, "client.warmup_steps=2")
    assert "run_schedule" in active(RUN, "client.lr_schedule='cosine'")
    assert "run_schedule" in active(RUN, "client.lr_schedule='linear'", "federation.mode='local'")


def test_a_run_span_with_nothing_to_span_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="client.lr_schedule_span = 'run' has nothing to span"):
        tiny_config(RUN)  # constant, no warm-up
    with pytest.raises(ConfigError, match="client.warmup_steps > 0"):
        tiny_config(RUN, "client.lr_schedule='constant'", "client.warmup_steps=0")


def rounds_of(
    store: ClientStateStore, client: str, steps: int, rounds: int
) -> list[tuple[int, int]]:
    """The schedule positions ``client`` gets in ``rounds`` rounds of ``steps`` steps."""
    positions = []
    for _ in range(rounds):
        hook = RunPosition(ClientContext(client, 1, 0, store=store), rounds=10)
        positions.append(hook.schedule(steps))
        hook.end(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    return positions


def test_each_client_continues_from_its_own_stored_count(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path)
    assert rounds_of(store, "a", 4, 3) == [(0, 40), (4, 40), (8, 40)]
    assert rounds_of(store, "b", 7, 2) == [(0, 70), (7, 70)]  # its own budget, its own total
    assert rounds_of(store, "a", 4, 1) == [(12, 40)]
    reopened = ClientStateStore(tmp_path)  # the count is on disk (the snapshot takes it)
    assert int(reopened.get("a")["steps_done"]) == 16  # type: ignore[index]
    assert int(reopened.get("b")["steps_done"]) == 14  # type: ignore[index]


class Placing(TrainHook):
    def __init__(self, position: tuple[int, int]) -> None:
        self.position = position

    def schedule(self, steps: int) -> tuple[int, int]:
        return self.position


def test_the_trainer_takes_the_one_placed_position_or_the_round() -> None:
    assert schedule_position([], 5) == (0, 5)
    assert schedule_position([TrainHook(), Placing((10, 50)), TrainHook()], 5) == (10, 50)
    with pytest.raises(ValueError, match="2 training hooks place the learning-rate schedule"):
        schedule_position([Placing((0, 5)), Placing((5, 10))], 5)
