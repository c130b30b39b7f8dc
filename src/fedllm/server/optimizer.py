"""Server optimizers: they see only the pseudo-gradient and their own state.

The pseudo-gradient is ``g = broadcast - aggregate``, minus the combined
client delta ``Delta``. FedAvg is SGD with learning rate ``lr`` on it
(``lr = 1`` replaces the global model by the clients' mean). The adaptive
ones follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2, with ``Delta = -g``::

    m_t = beta1 m_{t-1} + (1 - beta1) Delta_t
    v_t = v_{t-1} + Delta_t^2                                   (FedAdagrad)
    v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  (FedYogi)
    v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2                 (FedAdam)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau^2``. ``nesterov`` is DiLoCo's outer
optimizer (Douillard et al., "DiLoCo: Distributed Low-Communication Training
of Language Models", 2023): SGD with Nesterov momentum on ``g``. State
tensors are named ``m/<param>``, ``v/<param>`` and ``step`` so checkpoints
carry them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch

from fedllm.components import SERVER_OPTIMIZERS
from fedllm.server.settings import ServerConfig
from fedllm.types import Params


class ServerOptimizer(Protocol):
    """Applies a pseudo-gradient to the global parameters."""

    name: str

    def initial_state(self, params: Params) -> Params:
        """Optimizer state tensors (empty for stateless optimizers)."""
        ...

    def step(self, params: Params, pseudo_grad: Params, state: Params) -> None:
        """Update ``params`` (and ``state``) in place."""
        ...


@SERVER_OPTIMIZERS.register("fedavg")
class FedAvg:
    """``x <- x - lr * g``: with ``lr = 1``, the weighted mean of client models."""

    name = "fedavg"

    def __init__(self, cfg: ServerConfig) -> None:
        self.lr = cfg.lr

    def initial_state(self, params: Params) -> Params:
        return {}

    def step(self, params: Params, pseudo_grad: Params, state: Params) -> None:
        with torch.no_grad():
            for name, value in params.items():
                value.sub_(pseudo_grad[name].to(value.dtype), alpha=self.lr)


@SERVER_OPTIMIZERS.register("fedavgm")
class FedAvgM:
    """Server momentum (Hsu et al. 2019): ``u <- momentum u + g; x <- x - lr u``.

    The same as ``torch.optim.SGD(momentum=..., dampening=0)`` on ``g``.
    """

    name = "fedavgm"
    nesterov = False

    def __init__(self, cfg: ServerConfig) -> None:
        self.lr = cfg.lr
        self.momentum = cfg.momentum

    def initial_state(self, params: Params) -> Params:
        return {f"m/{k}": torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}

    def step(self, params: Params, pseudo_grad: Params, state: Params) -> None:
        with torch.no_grad():
            for name, value in params.items():
                grad = pseudo_grad[name].float()
                buf = state[f"m/{name}"]
                buf.mul_(self.momentum).add_(grad)
                update = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
                value.sub_(update.to(value.dtype), alpha=self.lr)


@SERVER_OPTIMIZERS.register("nesterov")
class OuterNesterov(FedAvgM):
    """DiLoCo's outer step (Douillard et al. 2023): Nesterov momentum on ``g``.

    ``u <- momentum u + g; x <- x - lr (g + momentum u)``, the same as
    ``torch.optim.SGD(momentum=..., nesterov=True, dampening=0)`` on ``g``.
    The paper uses ``lr = 0.7`` and ``momentum = 0.9``.
    """

    name = "nesterov"
    nesterov = True


class _Adaptive(ABC):
    """The shared body of FedAdagrad, FedYogi and FedAdam; subclasses update ``v``."""

    name = "adaptive"

    def __init__(self, cfg: ServerConfig) -> None:
        self.lr = cfg.lr
        self.beta1 = cfg.beta1
        self.beta2 = cfg.beta2
        self.tau = cfg.tau
        self.bias_correction = cfg.bias_correction

    def initial_state(self, params: Params) -> Params:
        state: Params = {"step": torch.zeros((), dtype=torch.float64)}
        v0 = 0.0 if self.bias_correction else self.tau**2
        for name, value in params.items():
            state[f"m/{name}"] = torch.zeros_like(value, dtype=torch.float32)
            state[f"v/{name}"] = torch.full_like(value, v0, dtype=torch.float32)
        return state

    @abstractmethod
    def update_v(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        """Second-moment update, in place."""

    def step(self, params: Params, pseudo_grad: Params, state: Params) -> None:
        state["step"] += 1
        t = float(state["step"])
        m_scale = 1 - self.beta1**t if self.bias_correction else 1.0
        v_scale = 1 - self.beta2**t if self.bias_correction else 1.0
        with torch.no_grad():
            for name, value in params.items():
                delta = -pseudo_grad[name].float()
                m, v = state[f"m/{name}"], state[f"v/{name}"]
                m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
                self.update_v(v, delta * delta)
                denom = (v / v_scale).sqrt_().add_(self.tau)
                value.add_((m / m_scale / denom).to(value.dtype), alpha=self.lr)


@SERVER_OPTIMIZERS.register("fedadagrad")
class FedAdagrad(_Adaptive):
    """``v <- v + Delta^2`` (Reddi et al. 2021)."""

    name = "fedadagrad"

    def update_v(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.add_(delta_sq)


@SERVER_OPTIMIZERS.register("fedyogi")
class FedYogi(_Adaptive):
    """``v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)`` (Reddi et al. 2021)."""

    name = "fedyogi"

    def update_v(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.sub_((1 - self.beta2) * delta_sq * torch.sign(v - delta_sq))


@SERVER_OPTIMIZERS.register("fedadam")
class FedAdam(_Adaptive):
    """``v <- beta2 v + (1 - beta2) Delta^2`` (Reddi et al. 2021)."""

    name = "fedadam"

    def update_v(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(delta_sq, alpha=1 - self.beta2)


def build_server_optimizer(cfg: ServerConfig) -> ServerOptimizer:
    """The server optimizer named by ``cfg.optimizer``."""
    factory = SERVER_OPTIMIZERS.get(cfg.optimizer)
    optimizer: ServerOptimizer = factory(cfg)
    return optimizer
