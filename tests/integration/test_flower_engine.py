"""The Flower engine carries the simulator's rounds unchanged.

The same config and seed give the same round records and the same global state
whether a round's messages are handed to clients in process or travel as Flower
messages (through Flower's protobuf) to per-client node apps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.setup import prepare
from fedllm.runtime.flower.engine import FlowerEngine, client_app_handler
from fedllm.runtime.simulation import SimulationEngine
from tests.support.flower import InProcessGrid
from tests.support.runs import stable, tiny_config

ROUNDS = 2
CASES = {
    "fedavg_lora": (),
    "scaffold": ('client.drift_correction="scaffold"',),
    "personal": ("personal.keys=['*lora_B*']",),
}


def flower_mode(mode: FederatedMode) -> InProcessGrid:
    """Put ``mode``'s clients behind Flower nodes (node id = 100 + index)."""
    assert isinstance(mode.engine, SimulationEngine)
    nodes = {client: 100 + i for i, client in enumerate(mode.clients)}
    apps = {node: client_app_handler(mode.engine.handler, c) for c, node in nodes.items()}
    grid = InProcessGrid(apps)
    mode.engine = FlowerEngine(grid, nodes)
    return grid


def play(mode: FederatedMode) -> list[dict[str, object]]:
    return [stable(mode.play_round(n, None).to_json()) for n in range(1, ROUNDS + 1)]


@pytest.mark.parametrize("case", CASES)
def test_flower_rounds_equal_the_simulators(case: str, tmp_path: Path) -> None:
    ws = prepare(tiny_config(*CASES[case], f"server.rounds={ROUNDS}"))
    simulated = build_mode(ws, tmp_path / "sim")
    carried = build_mode(ws, tmp_path / "flower")
    assert isinstance(simulated, FederatedMode) and isinstance(carried, FederatedMode)
    grid = flower_mode(carried)
    assert play(carried) == play(simulated)
    for name, value in simulated.state.params.items():
        assert torch.equal(carried.state.params[name], value), name
    assert sum(grid.sent_bytes.values()) > 0
    if case != "fedavg_lora":  # client state stayed with the clients, the same
        sim_files = sorted(p.relative_to(tmp_path / "sim") for p in (tmp_path / "sim").rglob("*"))
        assert sim_files == sorted(
            p.relative_to(tmp_path / "flower") for p in (tmp_path / "flower").rglob("*")
        )


def test_a_node_that_fails_or_stays_silent_is_dropped(tmp_path: Path) -> None:
    ws = prepare(tiny_config("server.clients_per_round=3"))
    mode = build_mode(ws, tmp_path)
    assert isinstance(mode, FederatedMode)
    grid = flower_mode(mode)
    cohort = mode.sampler.cohort(1)
    assert isinstance(mode.engine, FlowerEngine)
    grid.failing.add(mode.engine.nodes[cohort[0]])
    grid.silent.add(mode.engine.nodes[cohort[1]])
    record = mode.play_round(1, None)
    dropped = {d["client"]: d["reason"] for d in record.extra["dropped"]}
    assert "ClientApp crashed" in dropped[cohort[0]]
    assert "no reply" in dropped[cohort[1]]
    assert record.accepted == [cohort[2]] and record.skipped is None
