"""The client half of an attacker's own budget (:mod:`.budget`): a malicious client's
step count and base learning rate, from ``attack.from_round`` on."""

from __future__ import annotations

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.security.attacks.budget import NAME
from fedllm.types import ClientId


class BaseRate(TrainHook):
    """Sets the local optimizer's base learning rate, before the schedule is built
    (so warm-up and decay scale this rate)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def start_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.lr


class AttackerBudget(ClientPlugin):
    """The malicious clients' own steps and learning rate.

    Args:
        malicious: the malicious clients (the same in every round).
        from_round: the first round in which they train with this budget.
        local_steps: their optimizer steps per round; None: their recipe budget.
        lr: their base learning rate; None: the recipe's.
    """

    name = NAME

    def __init__(
        self,
        malicious: frozenset[ClientId],
        from_round: int,
        local_steps: int | None,
        lr: float | None,
    ) -> None:
        self.malicious = malicious
        self.from_round = from_round
        self.steps = local_steps
        self.lr = lr

    def _acts(self, ctx: ClientContext) -> bool:
        return ctx.client_id in self.malicious and ctx.round >= self.from_round

    def local_steps(self, ctx: ClientContext, steps: int) -> int:
        return self.steps if self.steps is not None and self._acts(ctx) else steps

    def train_hook(self, ctx: ClientContext) -> TrainHook | None:
        return BaseRate(self.lr) if self.lr is not None and self._acts(ctx) else None
