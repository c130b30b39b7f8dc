"""Server optimizers: they see only the pseudo-gradient and their own state.

The pseudo-gradient is ``broadcast - aggregate`` = minus the combined client
delta. FedAvg is SGD with learning rate ``lr`` on it (``lr = 1`` replaces the
global model by the clients' mean).
"""

from __future__ import annotations

from typing import Protocol

import torch

from fedllm.components import SERVER_OPTIMIZERS
from fedllm.config import ServerConfig
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


def build_server_optimizer(cfg: ServerConfig) -> ServerOptimizer:
    """The server optimizer named by ``cfg.optimizer``."""
    factory = SERVER_OPTIMIZERS.get(cfg.optimizer)
    optimizer: ServerOptimizer = factory(cfg)
    return optimizer
