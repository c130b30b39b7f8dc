"""The learning-rate schedule over the run: the client half (a step count per client)."""

from __future__ import annotations

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin

DONE = "steps_done"
"""Name of the stored count: the client's local steps in the rounds it trained so far."""


class RunPosition(TrainHook):
    """Places a round's steps after the client's earlier ones, in a schedule of
    ``steps x rounds`` steps; counts them once the round's last step is done."""

    def __init__(self, ctx: ClientContext, rounds: int) -> None:
        self.ctx = ctx
        self.rounds = rounds
        self.done = 0
        self.steps = 0

    def schedule(self, steps: int) -> tuple[int, int]:
        stored = self.ctx.load()
        self.done = int(stored[DONE]) if stored else 0
        self.steps = steps
        return self.done, steps * self.rounds

    def end(self, optimizer: torch.optim.Optimizer) -> None:
        self.ctx.save({DONE: torch.tensor(self.done + self.steps, dtype=torch.int64)})


class RunSchedulePlugin(ClientPlugin):
    """Every client's warm-up and decay span its local steps over ``rounds`` rounds.

    The schedule's length is this client's steps per round (its own budget:
    ``client.local_steps_by_client``, ``local_steps_min``, ``local_epochs``) times
    ``rounds``, so each client's decay ends with its last round whatever its budget.
    A client that trains in fewer rounds (``clients_per_round`` below the number of
    clients, dropouts) gets through only part of its schedule.
    """

    name = "run_schedule"
    keeps_state = True

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        return RunPosition(ctx, self.rounds)
