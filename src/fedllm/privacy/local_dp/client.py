"""The client half of record-level DP-SGD: its hook, its own accountant, its budget."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.privacy.accountant import PrivacyConfigError
from fedllm.privacy.local_dp.dpsgd import DPSGDHook
from fedllm.privacy.plan import LocalPlan
from fedllm.types import ClientId, ClientUpdate

EPSILON_METRIC = "local_epsilon"
"""Reply metric: the client's own epsilon after this round (record-level, its delta)."""

STEPS_KEY = "steps"


class DPSGDPlugin(ClientPlugin):
    """Trains each client with DP-SGD and keeps its steps so far (its accountant's events).

    Args:
        plans: each client's DP-SGD plan (its examples, lot and noise).
        clip_norm: the per-example gradient bound.
        micro_batches: ``client.grad_accum``.
        steps: each client's optimizer steps per round.
        secure: lots and noise from the OS CSPRNG (``run.randomness = 'secure'``).
    """

    name = "dp_sgd"
    public_metrics = frozenset({EPSILON_METRIC})  # a function of the config and its steps
    keeps_state = True

    def __init__(
        self,
        plans: Mapping[ClientId, LocalPlan],
        clip_norm: float,
        micro_batches: int,
        steps: Mapping[ClientId, int],
        secure: bool = False,
    ) -> None:
        self.plans, self.clip_norm, self.micro_batches = plans, clip_norm, micro_batches
        self.steps, self.secure = steps, secure
        self._hooks: dict[ClientId, DPSGDHook] = {}

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        plan = self.plans[ctx.client_id]
        done = spent_steps(ctx)
        target = plan.target_epsilon
        following = plan.epsilon(done + self.steps[ctx.client_id])
        if target is not None and following > target:  # the server stops the run first
            raise PrivacyConfigError(
                f"client {ctx.client_id}: another round would spend epsilon {following:.4g} > "
                f"privacy.target_epsilon = {target}; it does not train"
            )
        mechanism = plan.mechanism
        hook = DPSGDHook(
            self.clip_norm,
            mechanism.noise_multiplier,
            mechanism.cohort,
            self.micro_batches,
            ctx.seed,
            self.secure,
        )
        self._hooks[ctx.client_id] = hook
        return hook

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        steps = spent_steps(ctx) + int(update.metrics["steps"])
        ctx.save({STEPS_KEY: torch.tensor([steps], dtype=torch.int64)})
        hook = self._hooks.pop(ctx.client_id)
        update.metrics[EPSILON_METRIC] = self.plans[ctx.client_id].epsilon(steps)
        update.metrics.update({f"{self.name}/{k}": v for k, v in hook.report().items()})
        return update


def spent_steps(ctx: ClientContext) -> int:
    """The DP-SGD steps this client has taken in earlier rounds."""
    state = ctx.load()
    return int(state[STEPS_KEY].item()) if state and STEPS_KEY in state else 0
