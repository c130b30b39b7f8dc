"""SCAFFOLD and FedNova through the real client and server code, on quadratics
whose fixed points are known in closed form."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.client.scaffold import ControlVariates
from fedllm.client.side import ClientSide
from fedllm.client.store import CONTROL_SUFFIX, ClientStateStore
from fedllm.config import ClientConfig, ServerConfig
from fedllm.data import ClientData, Example
from fedllm.model.state import get_trainable_state
from fedllm.pipeline.stage import Pipeline
from fedllm.runtime.simulation import SimulationEngine
from fedllm.server.control import ServerControl
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.round import RoundExtensions, run_round
from fedllm.server.state import ServerState
from fedllm.types import ClientUpdate


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


def federation(
    centers: list[float], curvatures: list[float], cfg: ClientConfig, root: Path | None
) -> tuple[Quadratic, SimulationEngine, ServerControl | None]:
    model = Quadratic(centers, curvatures)
    clients = {
        f"c{i}": ClientData(f"c{i}", [Example([i, i], [i, i])], []) for i in range(len(centers))
    }
    template = get_trainable_state(model)
    controls = None
    control = None
    if root is not None:
        controls = ControlVariates(ClientStateStore(root, CONTROL_SUFFIX), template)
        control = ServerControl(template, len(clients))
    side = ClientSide(clients, cfg, 0, 0, lambda u: u, controls=controls)
    return model, SimulationEngine(model, side), control


def play(
    engine: SimulationEngine,
    model: Quadratic,
    rounds: int,
    cohorts: list[list[str]],
    control: ServerControl | None = None,
    fednova: bool = False,
) -> float:
    params = get_trainable_state(model)
    optimizer = build_server_optimizer(ServerConfig())
    state = ServerState(0, params, optimizer.initial_state(params))
    pipeline = Pipeline([], WeightedMean())
    for r in range(rounds):
        cohort = cohorts[r % len(cohorts)]
        extensions = RoundExtensions(control=control, fednova=fednova)
        record = run_round(
            state, cohort, engine, pipeline, optimizer, 1, "uniform", None, extensions
        )
        assert record.skipped is None and record.accepted == cohort
    return float(state.params["w"])


SGD = dict(optimizer="sgd", lr=0.05, local_steps=10, batch_size=1, max_grad_norm=None)
CENTERS, CURVATURES = [0.0, 1.0], [1.0, 10.0]
OPTIMUM = sum(a * h for a, h in zip(CENTERS, CURVATURES, strict=True)) / sum(CURVATURES)


def test_scaffold_converges_where_fedavg_drifts(tmp_path: Path) -> None:
    cfg = ClientConfig(**SGD)
    everyone = [["c0", "c1"]]
    model, engine, _ = federation(CENTERS, CURVATURES, cfg, None)
    fedavg = play(engine, model, 60, everyone)
    # FedAvg's fixed point weights client i by 1 - (1 - lr h_i)^K, not by h_i
    pull = [1 - (1 - 0.05 * h) ** 10 for h in CURVATURES]
    drifted = sum(p * a for p, a in zip(pull, CENTERS, strict=True)) / sum(pull)
    assert fedavg == pytest.approx(drifted, abs=1e-6)
    assert abs(fedavg - OPTIMUM) > 0.15

    model, engine, control = federation(CENTERS, CURVATURES, cfg, tmp_path)
    scaffold = play(engine, model, 60, everyone, control)
    assert scaffold == pytest.approx(OPTIMUM, abs=1e-6)


def test_scaffold_converges_under_partial_participation(tmp_path: Path) -> None:
    centers, curvatures = [0.0, 1.0, -1.0, 2.0], [1.0, 10.0, 3.0, 0.5]
    optimum = sum(a * h for a, h in zip(centers, curvatures, strict=True)) / sum(curvatures)
    rng = np.random.default_rng(0)
    cohorts = [sorted(f"c{i}" for i in rng.choice(4, 2, replace=False)) for _ in range(400)]
    cfg = ClientConfig(**SGD)
    model, engine, control = federation(centers, curvatures, cfg, tmp_path)
    scaffold = play(engine, model, 400, cohorts, control)
    model, engine, _ = federation(centers, curvatures, cfg, None)
    fedavg = play(engine, model, 400, cohorts)
    assert abs(scaffold - optimum) < 1e-3
    assert abs(fedavg - optimum) > 10 * abs(scaffold - optimum)
    # c stays the mean of every client's c_i (untrained ones count as 0)
    assert control is not None
    stored = ClientStateStore(tmp_path, CONTROL_SUFFIX)
    mean = sum(stored.get(c)["w"] for c in stored.clients()) / 4  # type: ignore[index]
    assert torch.allclose(control.control["w"], mean)


def test_one_scaffold_round_matches_the_paper_by_hand(tmp_path: Path) -> None:
    lr, steps, h, a = 0.1, 3, 2.0, 1.5
    cfg = ClientConfig(optimizer="sgd", lr=lr, local_steps=steps, batch_size=1, max_grad_norm=None)
    _, engine, control = federation([a], [h], cfg, tmp_path)
    assert control is not None
    c, c_own, x = 0.3, -0.2, 0.25
    control.control["w"].fill_(c)
    ClientStateStore(tmp_path, CONTROL_SUFFIX).put(
        "c0", {"w": torch.tensor([c_own], dtype=torch.float64)}
    )
    (update,) = engine.train(
        [("c0", {"w": torch.tensor([x], dtype=torch.float64)})], 1, None, control.control
    )

    y = x  # Karimireddy et al. 2020, Algorithm 1: y <- y - lr (g_i(y) - c_i + c)
    for _ in range(steps):
        y -= lr * (h * (y - a) - c_own + c)
    c_new = c_own - c + (x - y) / (steps * lr)  # option II
    assert float(update.delta["w"]) == pytest.approx(y - x, abs=1e-12)
    assert float(update.extra["w"]) == pytest.approx(c_new - c_own, abs=1e-12)
    stored = ClientStateStore(tmp_path, CONTROL_SUFFIX).get("c0")
    assert stored is not None and float(stored["w"]) == pytest.approx(c_new, abs=1e-12)


class Scripted:
    """An engine replaying fixed updates (to check the server's arithmetic alone)."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates

    def train(self, assignments, round_num, on_client_done=None, extra=None):  # type: ignore[no-untyped-def]
        yield from self.updates


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
    nova = RoundExtensions(fednova=True)
    record = run_round(
        state, ["a", "b"], Scripted(updates), pipeline, optimizer, 1, extensions=nova
    )
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
    record = run_round(
        state,
        ["a", "b"],
        Scripted(updates),
        Pipeline([], WeightedMean()),
        optimizer,
        1,
        extensions=RoundExtensions(fednova=True),
    )
    assert record.accepted == ["a"]
    assert "fednova_a" in record.rejected[0]["reason"]


def test_fednova_removes_the_bias_toward_clients_that_run_more_steps() -> None:
    # same curvature, different step counts: FedAvg leans toward the busy client
    base = dict(optimizer="sgd", lr=0.02, batch_size=1, max_grad_norm=None)
    cfg = ClientConfig(**base, local_steps=10, local_steps_by_client={"c0": 1})
    centers, curvatures = [0.0, 1.0], [1.0, 1.0]
    model, engine, _ = federation(centers, curvatures, cfg, None)
    fedavg = play(engine, model, 300, [["c0", "c1"]])
    model, engine, _ = federation(centers, curvatures, cfg, None)
    engine.side.fednova = True
    fednova = play(engine, model, 300, [["c0", "c1"]], fednova=True)
    # fixed points: weights 1 - 0.98^tau_i (FedAvg) and that over a_i = tau_i (FedNova)
    pull = [1 - 0.98**1, 1 - 0.98**10]
    assert fedavg == pytest.approx(pull[1] / sum(pull), abs=1e-4)
    nova = [pull[0] / 1, pull[1] / 10]
    assert fednova == pytest.approx(nova[1] / sum(nova), abs=1e-4)
    assert abs(fednova - 0.5) < 0.05 < 0.3 < abs(fedavg - 0.5)
