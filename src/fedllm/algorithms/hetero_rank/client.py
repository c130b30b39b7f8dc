"""Heterogeneous LoRA ranks, client half: train the truncated model, upload its slices."""

from __future__ import annotations

from fedllm.algorithms.hetero_rank.plan import RANK_METRIC, RankPlan
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.types import ClientUpdate, Params


class RankPlugin(ClientPlugin):
    """A rank-``r_i`` client trains the broadcast truncated to ``r_i`` and uploads
    ``A[:r_i]``, ``B[:, :r_i]`` (see :mod:`fedllm.algorithms.hetero_rank.plan`).

    Args:
        plan: who trains which rank.
    """

    name = "rank"
    public_metrics = frozenset({RANK_METRIC})  # assigned by the config

    def __init__(self, plan: RankPlan) -> None:
        self.plan = plan

    def start(self, ctx: ClientContext, state: Params) -> Params:
        return self.plan.start(ctx.client_id, state)

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        return self.plan.upload(update)
