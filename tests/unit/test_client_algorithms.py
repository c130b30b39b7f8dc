"""Step budgets, FedNova's step norms and the per-client stores of SCAFFOLD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm.algorithms.fednova.norm import client_norm, effective_steps, step_norm
from fedllm.algorithms.scaffold.control import ServerControl
from fedllm.algorithms.scaffold.variates import ControlVariates
from fedllm.client.budget import check_budget_clients, client_steps
from fedllm.client.store import ClientStateStore
from fedllm.client.train import lr_factor
from fedllm.config import ClientConfig, ConfigError, parse_config


def paper_momentum(tau: int, rho: float) -> float:
    """Wang et al. (2020): a_i for SGD with momentum rho at a constant learning rate."""
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


def paper_prox(tau: int, lr_mu: float) -> float:
    """Wang et al. (2020): a_i for FedProx (proximal weight mu, learning rate lr)."""
    return (1 - (1 - lr_mu) ** tau) / lr_mu


def sgd_displacement(
    lrs: list[float], base_lr: float, momentum: float, prox_mu: float, decay: float
) -> float:
    """-(w_tau - w_0) / base_lr of torch's SGD on a loss whose gradient is always 1, with
    FedProx's gradient mu (w - w_0) added as the client's hook adds it: the sum of
    FedNova's coefficients."""
    w = torch.zeros(1, requires_grad=True, dtype=torch.float64)
    start = w.detach().clone()
    opt = torch.optim.SGD([w], lr=base_lr, momentum=momentum, weight_decay=decay)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.ones_like(w) + prox_mu * (w.detach() - start)
        opt.step()
    return float(-(w.detach() - start) / base_lr)


@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_step_norms_are_the_papers_closed_forms_at_a_constant_rate(steps: int) -> None:
    constant = [0.1] * steps
    assert step_norm(constant, 0.1) == pytest.approx(steps, rel=1e-12)
    assert step_norm(constant, 0.1, momentum=0.9) == pytest.approx(paper_momentum(steps, 0.9))
    assert step_norm(constant, 0.1, shrink=0.5) == pytest.approx(paper_prox(steps, 0.05))


def test_momentum_and_prox_together_follow_sgd_not_either_closed_form() -> None:
    """tau = 10, rho = 0.9, lr mu = 0.05: the coefficients sum to 26.22, where the
    momentum form alone gives 41.38 (what fedllm returned before)."""
    lrs = [0.1] * 10
    norm = step_norm(lrs, 0.1, momentum=0.9, shrink=0.5)
    assert norm == pytest.approx(26.2184582, rel=1e-7)
    assert norm == pytest.approx(sgd_displacement(lrs, 0.1, 0.9, 0.5, 0.0), rel=1e-12)
    assert paper_momentum(10, 0.9) == pytest.approx(41.3810596, rel=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    lrs=st.lists(st.floats(1e-3, 0.2), min_size=1, max_size=25),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    prox_mu=st.sampled_from([0.0, 0.1, 1.0]),
    decay=st.sampled_from([0.0, 0.01, 0.5]),
)
def test_step_norms_equal_sgd_run_with_gradient_one(
    lrs: list[float], momentum: float, prox_mu: float, decay: float
) -> None:
    """Any schedule, momentum, FedProx and L2 weight decay: a_i is the displacement of
    SGD fed gradient 1 (all coefficients are positive at these rates)."""
    norm = step_norm(lrs, 0.1, momentum, prox_mu + decay)
    direct = sgd_displacement(lrs, 0.1, momentum, prox_mu, decay)
    assert norm == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize(("steps", "truth"), [(4, 2.5), (16, 8.5)])
def test_a_cosine_schedule_counts_each_step_by_its_rate(steps: int, truth: float) -> None:
    """Plain SGD under cosine: a_i = sum_t lr_t / lr (4 steps: 2.5, 16 steps: 8.5), not tau."""
    cfg = ClientConfig(optimizer="sgd", lr=0.1, lr_schedule="cosine")
    lrs = [0.1 * lr_factor(t, steps, cfg) for t in range(steps)]
    assert step_norm(lrs, 0.1) == pytest.approx(truth, rel=1e-12)
    assert effective_steps(lrs, 0.1) == pytest.approx(truth, rel=1e-12)


def test_the_steps_heuristic_is_tau_at_a_constant_rate_exactly() -> None:
    assert effective_steps([5e-3] * 3, 5e-3) == 3.0


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


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ({}, "client.optimizer = 'adamw' has no such norm"),
        (
            {"optimizer": "sgd", "prox_mu": 0.1, "max_grad_norm": 1.0},
            "the clip scales FedProx's term",
        ),
        (
            {"optimizer": "sgd", "momentum": 0.9, "keep_optimizer_state": True},
            "the momentum carried in from earlier rounds",
        ),
    ],
)
def test_fednova_refuses_what_its_norm_cannot_follow(
    client: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"client": client, "server": {"normalize": "fednova"}})


def test_fednova_takes_what_its_norm_follows_and_the_heuristic_takes_adamw() -> None:
    sgd = {"optimizer": "sgd", "momentum": 0.9, "prox_mu": 0.1, "max_grad_norm": "none"}
    parse_config({"client": sgd | {"weight_decay": 0.01}, "server": {"normalize": "fednova"}})
    parse_config({"client": {"optimizer": "sgd"}, "server": {"normalize": "fednova"}})
    parse_config({"server": {"normalize": "fednova_steps"}})


def test_a_clients_norm_takes_momentum_prox_and_weight_decay_from_its_config() -> None:
    cfg = ClientConfig(optimizer="sgd", lr=0.1, momentum=0.5, prox_mu=0.2, weight_decay=0.05)
    lrs = [0.1 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 0.5)]
    assert client_norm(cfg, "fednova", lrs) == pytest.approx(
        sgd_displacement(lrs, 0.1, 0.5, 0.2, 0.05), rel=1e-12
    )
    assert client_norm(cfg, "fednova_steps", lrs) == pytest.approx(4.0, rel=1e-12)
