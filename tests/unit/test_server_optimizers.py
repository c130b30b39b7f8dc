"""Server optimizers against torch's optimizers and a direct transcription of
Reddi et al. 2021, Algorithm 2, applied to the pseudo-gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedllm.config import ServerConfig
from fedllm.server.optimizer import build_server_optimizer

STEPS = 4


def pseudo_grads(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}
        for _ in range(STEPS)
    ]


def start() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}


def run_ours(cfg: ServerConfig) -> dict[str, torch.Tensor]:
    params = start()
    opt = build_server_optimizer(cfg)
    state = opt.initial_state(params)
    for grad in pseudo_grads():
        opt.step(params, grad, state)
    return params


def run_torch(make: type[torch.optim.Optimizer], **kwargs: object) -> dict[str, torch.Tensor]:
    params = {k: torch.nn.Parameter(v) for k, v in start().items()}
    opt = make(list(params.values()), **kwargs)
    for grad in pseudo_grads():
        for name, p in params.items():
            p.grad = grad[name].clone()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_fedavg_is_sgd_on_the_pseudo_gradient() -> None:
    ours = run_ours(ServerConfig(optimizer="fedavg", lr=0.7))
    assert_same(ours, run_torch(torch.optim.SGD, lr=0.7))


def test_fedavgm_is_sgd_with_momentum() -> None:
    ours = run_ours(ServerConfig(optimizer="fedavgm", lr=0.5, momentum=0.8))
    assert_same(ours, run_torch(torch.optim.SGD, lr=0.5, momentum=0.8))


def test_fedadam_with_bias_correction_is_torch_adam() -> None:
    cfg = ServerConfig(
        optimizer="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True
    )
    assert_same(run_ours(cfg), run_torch(torch.optim.Adam, lr=0.1, betas=(0.9, 0.99), eps=1e-3))


def test_fedadagrad_without_momentum_is_torch_adagrad() -> None:
    cfg = ServerConfig(optimizer="fedadagrad", lr=0.1, beta1=0.0, tau=1e-2)
    expected = run_torch(torch.optim.Adagrad, lr=0.1, eps=1e-2, initial_accumulator_value=1e-4)
    assert_same(run_ours(cfg), expected)


def algorithm_2(
    kind: str, eta: float, beta1: float, beta2: float, tau: float
) -> dict[str, np.ndarray]:
    """Reddi et al. 2021, Algorithm 2, transcribed in numpy (float64)."""
    x = {k: v.double().numpy() for k, v in start().items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(val, tau**2) for k, val in x.items()}
    for grad in pseudo_grads():
        for name in x:
            delta = -grad[name].double().numpy()
            m[name] = beta1 * m[name] + (1 - beta1) * delta
            if kind == "fedadagrad":
                v[name] = v[name] + delta**2
            elif kind == "fedyogi":
                v[name] = v[name] - (1 - beta2) * delta**2 * np.sign(v[name] - delta**2)
            else:
                v[name] = beta2 * v[name] + (1 - beta2) * delta**2
            x[name] = x[name] + eta * m[name] / (np.sqrt(v[name]) + tau)
    return x


@pytest.mark.parametrize("kind", ["fedadagrad", "fedyogi", "fedadam"])
def test_adaptive_optimizers_follow_the_paper(kind: str) -> None:
    cfg = ServerConfig(optimizer=kind, lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    ours = run_ours(cfg)
    reference = algorithm_2(kind, 0.05, 0.9, 0.99, 1e-3)
    for name in ours:
        np.testing.assert_allclose(
            ours[name].double().numpy(), reference[name], rtol=1e-5, atol=1e-6
        )


def test_optimizers_differ_from_each_other() -> None:
    results = {
        k: run_ours(ServerConfig(optimizer=k, lr=0.05))
        for k in ("fedadagrad", "fedyogi", "fedadam")
    }
    assert not torch.allclose(results["fedyogi"]["w"], results["fedadam"]["w"])
    assert not torch.allclose(results["fedadagrad"]["w"], results["fedadam"]["w"])


def test_nesterov_is_sgd_with_nesterov_momentum() -> None:
    """DiLoCo's outer optimizer over several rounds, with the paper's lr and momentum."""
    ours = run_ours(ServerConfig(optimizer="nesterov", lr=0.7, momentum=0.9))
    expected = run_torch(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True)
    assert_same(ours, expected)
    plain_momentum = run_torch(torch.optim.SGD, lr=0.7, momentum=0.9)
    assert not torch.allclose(ours["w"], plain_momentum["w"])


def test_one_nesterov_step_is_sgd_with_nesterov() -> None:
    params = start()
    opt = build_server_optimizer(ServerConfig(optimizer="nesterov", lr=0.3, momentum=0.5))
    opt.step(params, pseudo_grads()[0], opt.initial_state(params))
    torch_params = {k: torch.nn.Parameter(v) for k, v in start().items()}
    sgd = torch.optim.SGD(list(torch_params.values()), lr=0.3, momentum=0.5, nesterov=True)
    for name, p in torch_params.items():
        p.grad = pseudo_grads()[0][name].clone()
    sgd.step()
    assert_same(params, {k: v.detach() for k, v in torch_params.items()})


def test_nesterov_steps_by_hand() -> None:
    opt = build_server_optimizer(ServerConfig(optimizer="nesterov", lr=0.5, momentum=0.9))
    params = {"x": torch.tensor([1.0, -2.0])}
    state = opt.initial_state(params)
    # u1 = g1 = [0.2, -0.4]; x1 = x0 - 0.5 (g1 + 0.9 u1) = x0 - 0.95 g1
    opt.step(params, {"x": torch.tensor([0.2, -0.4])}, state)
    torch.testing.assert_close(params["x"], torch.tensor([1.0 - 0.19, -2.0 + 0.38]))
    torch.testing.assert_close(state["m/x"], torch.tensor([0.2, -0.4]))
    # u2 = 0.9 u1 + g2 = [0.28, -0.36]; x2 = x1 - 0.5 (g2 + 0.9 u2) = x1 - 0.5 [0.352, -0.324]
    opt.step(params, {"x": torch.tensor([0.1, 0.0])}, state)
    torch.testing.assert_close(params["x"], torch.tensor([0.81 - 0.176, -1.62 + 0.162]))
    torch.testing.assert_close(state["m/x"], torch.tensor([0.28, -0.36]))
