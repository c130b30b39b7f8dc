"""A round's ``time_s``: the plug-ins' end of round (a measurement of the stepped model,
as a data attack's success rate) is timed apart from the aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.components import ALGORITHMS, load_builtin
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.federation.runner import run
from fedllm.protocol import fedavg
from fedllm.server.plugin import RoundContext, ServerPlugin
from tests.support.runs import tiny_config

SLOW_END = 1000.0
"""Seconds of the fake clock each end of round takes."""


class FakeClock:
    """``time.perf_counter`` advancing one second a call, plus what plug-ins add."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


CLOCK = FakeClock()


class SlowEnd(ServerPlugin):
    name = "slow_end"

    def end_round(self, ctx: RoundContext) -> None:
        CLOCK.now += SLOW_END


def _register() -> None:
    load_builtin()
    if "slow_end" in ALGORITHMS:
        return

    class SlowEndAlgorithm:
        order = 95
        opt_in = True

        def build(self, setup: AlgorithmSetup) -> Algorithm:
            return Algorithm("slow_end", server=SlowEnd())

    ALGORITHMS.register("slow_end")(SlowEndAlgorithm)


def test_end_of_round_hooks_are_not_aggregation_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register()
    monkeypatch.setattr(fedavg, "time", CLOCK)
    config = tiny_config("federation.algorithms=['slow_end']", "server.rounds=2")
    result = run(config, tmp_path / "run")
    for record in result.records[1:]:
        assert record["time_s"]["end_round"] == SLOW_END + 1.0
        assert record["time_s"]["aggregate"] < 10.0  # a few ticks of the fake clock
