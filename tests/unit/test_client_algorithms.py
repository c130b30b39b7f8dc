"""Step budgets, FedNova's step norms and the per-client stores of SCAFFOLD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.algorithms.fednova.norm import step_norm
from fedllm.algorithms.scaffold.control import ServerControl
from fedllm.algorithms.scaffold.variates import ControlVariates
from fedllm.client.budget import check_budget_clients, client_steps
from fedllm.client.store import ClientStateStore
from fedllm.config import ClientConfig, ConfigError, parse_config


def coefficients_sum(steps: int, momentum: float = 0.0, shrink: float = 0.0) -> float:
    """Sum over local steps of how much each step's gradient moves the final iterate,
    by unrolling the recursion (FedNova's ||a_i||_1)."""
    total = 0.0
    for t in range(steps):
        remaining = steps - t  # steps from t to the end, this one included
        if momentum:  # the gradient of step t keeps acting through the velocity
            total += sum(momentum**k for k in range(remaining))
        else:  # the prox term shrinks the displacement of step t by (1 - lr mu) per later step
            total += (1 - shrink) ** (remaining - 1)
    return total


@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_step_norms_equal_the_unrolled_coefficients(steps: int) -> None:
    assert step_norm(ClientConfig(), steps) == steps
    sgd_m = ClientConfig(optimizer="sgd", momentum=0.9)
    assert step_norm(sgd_m, steps) == pytest.approx(coefficients_sum(steps, momentum=0.9))
    prox = ClientConfig(optimizer="sgd", lr=0.1, prox_mu=0.5)
    assert step_norm(prox, steps) == pytest.approx(coefficients_sum(steps, shrink=0.05))


def test_budgets_are_fixed_per_client_and_cover_the_range() -> None:
    cfg = ClientConfig(local_steps=6, local_steps_min=2, local_steps_by_client={"vip": 9})
    draws = {f"c{i}": client_steps(cfg, f"c{i}", 100, seed=0) for i in range(200)}
    assert set(draws.values()) == set(range(2, 7))
    assert all(client_steps(cfg, c, 5, seed=0) == s for c, s in draws.items())
    assert client_steps(cfg, "vip", 100, seed=0) == 9
    other_seed = [client_steps(cfg, f"c{i}", 100, seed=1) for i in range(200)]
    assert other_seed != list(draws.values())
    assert client_steps(ClientConfig(local_steps=3), "x", 100, seed=0) == 3


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="local_steps_min = 8 exceeds"):
        parse_config({"client": {"local_steps": 4, "local_steps_min": 8}})
    with pytest.raises(ConfigError, match="local_epochs"):
        parse_config({"client": {"local_steps_min": 1, "local_epochs": 1.0}})
    with pytest.raises(ConfigError, match="steps >= 1"):
        parse_config({"client": {"local_steps_by_client": {"a": 0}}})
    with pytest.raises(ConfigError, match=r"unknown client\(s\) \['zed'\].*alice"):
        check_budget_clients(ClientConfig(local_steps_by_client={"zed": 2}), ["alice", "bob"])


def test_personal_and_control_files_share_a_folder_without_mixing(tmp_path: Path) -> None:
    clients = ClientStateStore(tmp_path)  # a mode's own client models (local mode)
    personal = clients.slot("personal")
    controls = clients.slot("scaffold")
    clients.put("a.b", {"x": torch.full((1,), 2.0)})
    personal.put("a.b", {"x": torch.ones(1)})
    controls.put("a.b", {"x": torch.zeros(1)})
    controls.put("c", {"x": torch.zeros(1)})
    assert clients.clients() == ["a.b"]
    assert personal.clients() == ["a.b"]
    assert controls.clients() == ["a.b", "c"]
    assert float(clients.get("a.b")["x"]) == 2.0  # type: ignore[index]
    assert float(personal.get("a.b")["x"]) == 1.0  # type: ignore[index]
    assert float(controls.get("a.b")["x"]) == 0.0  # type: ignore[index]
    assert (tmp_path / "scaffold" / "c.safetensors").exists()


def test_control_variates_start_at_zero_and_skip_non_finite_results(tmp_path: Path) -> None:
    template = {"w": torch.ones(2, 3)}
    variates = ControlVariates(ClientStateStore(tmp_path).slot("scaffold"), template)
    assert torch.equal(variates.of("new")["w"], torch.zeros(2, 3))
    server = {"w": torch.full((2, 3), 0.5)}
    change = variates.advance("a", server, {"w": torch.full((2, 3), -1.0)}, lr_sum=0.5)
    assert torch.allclose(change["w"], torch.full((2, 3), -0.5 + 2.0))
    bad = variates.advance("a", server, {"w": torch.full((2, 3), float("nan"))}, lr_sum=0.5)
    assert not torch.isfinite(bad["w"]).all()
    assert torch.allclose(variates.of("a")["w"], torch.full((2, 3), 1.5))  # kept the last good
    with pytest.raises(ValueError, match="positive learning rate"):
        variates.advance("a", server, {"w": torch.zeros(2, 3)}, lr_sum=0.0)


def test_server_control_moves_by_the_sum_over_all_clients() -> None:
    control = ServerControl({"w": torch.zeros(2)}, num_clients=4)
    control.start()
    control.add({"w": torch.tensor([1.0, 2.0])})
    control.add({"w": torch.tensor([3.0, -2.0])})
    control.finish()
    assert torch.equal(control.control["w"], torch.tensor([1.0, 0.0]))  # (4, 0) / 4
