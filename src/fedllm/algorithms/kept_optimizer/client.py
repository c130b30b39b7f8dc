"""A client's local optimizer state kept across rounds (DiLoCo's inner AdamW)."""

from __future__ import annotations

import torch

from fedllm.algorithms.kept_optimizer.state import export_state, import_state
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.model.state import all_finite
from fedllm.types import Params


class KeptState(TrainHook):
    """Loads the stored optimizer state before the first step; stores it after the last
    (unless it is not finite: a diverged client keeps its previous state)."""

    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx

    def start_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        import_state(optimizer, self.ctx.load() or {})

    def end(self, optimizer: torch.optim.Optimizer) -> None:
        state: Params = export_state(optimizer)
        if state and all_finite(state):
            self.ctx.save(state)


class KeptOptimizerPlugin(ClientPlugin):
    """Local training continues each client's own optimizer (see
    :mod:`fedllm.algorithms.kept_optimizer.state`)."""

    name = "optimizer"
    keeps_state = True

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        return KeptState(ctx)
