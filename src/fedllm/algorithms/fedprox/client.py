"""FedProx (Li et al. 2020): the local objective gains ``mu/2 ||w - w_start||^2``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.types import Params


def add_proximal_gradient(
    params: Sequence[torch.nn.Parameter], anchor: Sequence[torch.Tensor], mu: float
) -> None:
    """``grad += mu (w - anchor)``: the gradient of FedProx's ``mu/2 ||w - anchor||^2``."""
    with torch.no_grad():
        for param, start in zip(params, anchor, strict=True):
            term = (param - start.to(param.device, param.dtype)) * mu
            if param.grad is None:
                param.grad = term
            else:
                param.grad.add_(term)


class ProximalTerm(TrainHook):
    """Adds the proximal gradient to every step's unscaled gradient, before clipping.

    Args:
        mu: the proximal weight (> 0).
    """

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self.anchor: list[torch.Tensor] = []

    def begin(
        self, names: Sequence[str], params: Sequence[torch.nn.Parameter], start: Params
    ) -> None:
        self.anchor = [start[n] for n in names]

    def on_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        add_proximal_gradient(params, self.anchor, self.mu)


class ProxPlugin(ClientPlugin):
    """Keeps each client near the state it started the round from.

    Args:
        mu: the proximal weight (> 0).
    """

    name = "fedprox"

    def __init__(self, mu: float) -> None:
        if not mu > 0:
            raise ValueError(f"FedProx needs mu > 0, got {mu}")
        self.mu = mu

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        return ProximalTerm(self.mu)
