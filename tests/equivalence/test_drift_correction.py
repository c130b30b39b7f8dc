"""SCAFFOLD and FedNova through the real client and server code, on quadratics
whose fixed points are known in closed form."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.algorithms.fednova.client import FedNovaPlugin
from fedllm.algorithms.fednova.norm import NORM_METRIC
from fedllm.algorithms.fednova.server import FedNovaServer
from fedllm.algorithms.scaffold.client import ScaffoldPlugin
from fedllm.algorithms.scaffold.server import ScaffoldServer
from fedllm.client.plugin import ClientPlugin
from fedllm.client.side import TRAIN, ClientSide
from fedllm.client.store import ClientStateStore
from fedllm.config import ClientConfig, ServerConfig
from fedllm.data import ClientData, Example
from fedllm.message import ROUND, Message
from fedllm.model.state import get_trainable_state
from fedllm.pipeline.stage import Pipeline
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.runtime.simulation import SimulationEngine
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.plugin import ServerPlugin
from fedllm.server.state import ServerState
from fedllm.types import ClientUpdate, join_parts


class Quadratic(torch.nn.Module):
    """Client c's loss is ``0.5 * h_c * (w - a_c)^2`` (per coordinate, summed);
    c is read from the first token of each example."""

    def __init__(self, centers: list[float], curvatures: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.register_buffer("a", torch.tensor(centers, dtype=torch.float64)[:, None])
        self.register_buffer("h", torch.tensor(curvatures, dtype=torch.float64)[:, None])

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        c = input_ids[:, 0]
        loss = 0.5 * (self.h[c] * (self.w - self.a[c]) ** 2).sum(-1).mean()
        return SimpleNamespace(loss=loss)


class Federation(NamedTuple):
    model: Quadratic
    engine: SimulationEngine
    plugins: list[ServerPlugin]
    scaffold: ScaffoldServer | None


def federation(
    centers: list[float],
    curvatures: list[float],
    cfg: ClientConfig,
    root: Path | None,
    fednova: bool = False,
) -> Federation:
    """SCAFFOLD on both sides when ``root`` (the clients' state folder) is given;
    FedNova on both sides with ``fednova``."""
    model = Quadratic(centers, curvatures)
    clients = {
        f"c{i}": ClientData(f"c{i}", [Example([i, i], [i, i])], []) for i in range(len(centers))
    }
    template = get_trainable_state(model)
    client_plugins: list[ClientPlugin] = []
    server_plugins: list[ServerPlugin] = []
    control = None
    store = None
    if root is not None:
        store = ClientStateStore(root)
        control = ScaffoldServer(template, len(clients))
        client_plugins.append(ScaffoldPlugin())
        server_plugins.append(control)
    if fednova:
        client_plugins.append(FedNovaPlugin(cfg))
        server_plugins.append(FedNovaServer(NORM_METRIC))
    side = ClientSide(clients, cfg, 0, 0, model, client_plugins, store=store)
    return Federation(model, SimulationEngine(side.handle), server_plugins, control)


def play(fed: Federation, rounds: int, cohorts: list[list[str]]) -> float:
    params = get_trainable_state(fed.model)
    optimizer = build_server_optimizer(ServerConfig())
    state = ServerState(0, params, optimizer.initial_state(params))
    pipeline = Pipeline([], WeightedMean())
    setup = TrainingSetup(pipeline, optimizer, fed.plugins, 1, "uniform")
    for r in range(rounds):
        cohort = cohorts[r % len(cohorts)]
        record = run_round(state, cohort, fed.engine, setup)
        assert record.skipped is None and record.accepted == cohort
    return float(state.params["w"])


SGD = dict(optimizer="sgd", lr=0.05, local_steps=10, batch_size=1, max_grad_norm=None)
CENTERS, CURVATURES = [0.0, 1.0], [1.0, 10.0]
OPTIMUM = sum(a * h for a, h in zip(CENTERS, CURVATURES, strict=True)) / sum(CURVATURES)


def test_scaffold_converges_where_fedavg_drifts(tmp_path: Path) -> None:
    cfg = ClientConfig(**SGD)
    everyone = [["c0", "c1"]]
    fedavg = play(federation(CENTERS, CURVATURES, cfg, None), 60, everyone)
    # FedAvg's fixed point weights client i by 1 - (1 - lr h_i)^K, not by h_i
    pull = [1 - (1 - 0.05 * h) ** 10 for h in CURVATURES]
    drifted = sum(p * a for p, a in zip(pull, CENTERS, strict=True)) / sum(pull)
    assert fedavg == pytest.approx(drifted, abs=1e-6)
    assert abs(fedavg - OPTIMUM) > 0.15

    scaffold = play(federation(CENTERS, CURVATURES, cfg, tmp_path), 60, everyone)
    assert scaffold == pytest.approx(OPTIMUM, abs=1e-6)


def test_scaffold_converges_under_partial_participation(tmp_path: Path) -> None:
    centers, curvatures = [0.0, 1.0, -1.0, 2.0], [1.0, 10.0, 3.0, 0.5]
    optimum = sum(a * h for a, h in zip(centers, curvatures, strict=True)) / sum(curvatures)
    rng = np.random.default_rng(0)
    cohorts = [sorted(f"c{i}" for i in rng.choice(4, 2, replace=False)) for _ in range(400)]
    cfg = ClientConfig(**SGD)
    fed = federation(centers, curvatures, cfg, tmp_path)
    scaffold = play(fed, 400, cohorts)
    fedavg = play(federation(centers, curvatures, cfg, None), 400, cohorts)
    assert abs(scaffold - optimum) < 1e-3
    assert abs(fedavg - optimum) > 10 * abs(scaffold - optimum)
    # c stays the mean of every client's c_i (untrained ones count as 0)
    assert fed.scaffold is not None
    stored = ClientStateStore(tmp_path).slot("scaffold")
    mean = sum(stored.get(c)["w"] for c in stored.clients()) / 4  # type: ignore[index]
    assert torch.allclose(fed.scaffold.control.control["w"], mean)


def test_one_scaffold_round_matches_the_paper_by_hand(tmp_path: Path) -> None:
    lr, steps, h, a = 0.1, 3, 2.0, 1.5
    cfg = ClientConfig(optimizer="sgd", lr=lr, local_steps=steps, batch_size=1, max_grad_norm=None)
    fed = federation([a], [h], cfg, tmp_path)
    assert fed.scaffold is not None
    control = fed.scaffold.control
    c, c_own, x = 0.3, -0.2, 0.25
    control.control["w"].fill_(c)
    ClientStateStore(tmp_path).slot("scaffold").put(
        "c0", {"w": torch.tensor([c_own], dtype=torch.float64)}
    )
    arrays = join_parts(
        {"w": torch.tensor([x], dtype=torch.float64)}, {"scaffold": control.control}
    )
    broadcast = Message(arrays=arrays, config={ROUND: 1})
    ((client, reply),) = fed.engine.exchange(TRAIN, {"c0": broadcast})
    assert client == "c0" and isinstance(reply, Message)
    assert sorted(reply.arrays) == ["scaffold/w", "w"]

    y = x  # Karimireddy et al. 2020, Algorithm 1: y <- y - lr (g_i(y) - c_i + c)
    for _ in range(steps):
        y -= lr * (h * (y - a) - c_own + c)
    c_new = c_own - c + (x - y) / (steps * lr)  # option II
    assert float(reply.arrays["w"]) == pytest.approx(y - x, abs=1e-12)
    assert float(reply.arrays["scaffold/w"]) == pytest.approx(c_new - c_own, abs=1e-12)
    stored = ClientStateStore(tmp_path).slot("scaffold").get("c0")
    assert stored is not None and float(stored["w"]) == pytest.approx(c_new, abs=1e-12)


class Scripted:
    """An engine replaying fixed updates (to check the server's arithmetic alone)."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates

    def exchange(self, phase, messages):  # type: ignore[no-untyped-def]
        for update in self.updates:
            yield update.client_id, ClientSide.reply(update)


def test_fednova_rescales_by_the_effective_steps_by_hand() -> None:
    x = {"w": torch.tensor([1.0, 2.0])}
    d1, d2 = torch.tensor([0.5, -1.0]), torch.tensor([3.0, 0.0])
    updates = [
        ClientUpdate("a", {"w": d1}, 10, {"fednova_a": 1.0}),
        ClientUpdate("b", {"w": d2}, 30, {"fednova_a": 4.0}),
    ]
    optimizer = build_server_optimizer(ServerConfig())
    state = ServerState(0, {"w": x["w"].clone()}, optimizer.initial_state(x))
    pipeline = Pipeline([], WeightedMean())
    nova = TrainingSetup(pipeline, optimizer, [FedNovaServer(NORM_METRIC)], 1)
    record = run_round(state, ["a", "b"], Scripted(updates), nova)
    tau_eff = (10 * 1.0 + 30 * 4.0) / 40
    expected = x["w"] + tau_eff * (10 * d1 + 30 * d2) / 40
    assert torch.allclose(state.params["w"], expected)
    assert record.extra["fednova_tau_eff"] == pytest.approx(tau_eff)


def test_fednova_refuses_updates_without_a_step_norm() -> None:
    x = {"w": torch.tensor([1.0])}
    updates = [
        ClientUpdate("a", {"w": torch.ones(1)}, 1, {"fednova_a": 2.0}),
        ClientUpdate("b", {"w": torch.ones(1)}, 1, {}),
    ]
    optimizer = build_server_optimizer(ServerConfig())
    state = ServerState(0, {"w": x["w"].clone()}, {})
    setup = TrainingSetup(Pipeline([], WeightedMean()), optimizer, [FedNovaServer(NORM_METRIC)], 1)
    record = run_round(state, ["a", "b"], Scripted(updates), setup)
    assert record.accepted == ["a"]
    assert "fednova_a" in record.rejected[0]["reason"]


def test_fednova_removes_the_bias_toward_clients_that_run_more_steps() -> None:
    # same curvature, different step counts: FedAvg leans toward the busy client
    base = dict(optimizer="sgd", lr=0.02, batch_size=1, max_grad_norm=None)
    cfg = ClientConfig(**base, local_steps=10, local_steps_by_client={"c0": 1})
    centers, curvatures = [0.0, 1.0], [1.0, 1.0]
    fedavg = play(federation(centers, curvatures, cfg, None), 300, [["c0", "c1"]])
    fednova = play(federation(centers, curvatures, cfg, None, fednova=True), 300, [["c0", "c1"]])
    # fixed points: weights 1 - 0.98^tau_i (FedAvg) and that over a_i = tau_i (FedNova)
    pull = [1 - 0.98**1, 1 - 0.98**10]
    assert fedavg == pytest.approx(pull[1] / sum(pull), abs=1e-4)
    nova = [pull[0] / 1, pull[1] / 10]
    assert fednova == pytest.approx(nova[1] / sum(nova), abs=1e-4)
    assert abs(fednova - 0.5) < 0.05 < 0.3 < abs(fedavg - 0.5)
