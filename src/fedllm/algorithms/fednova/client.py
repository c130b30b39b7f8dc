"""FedNova, client half: the update divided by its step norm ``a_i``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.algorithms.fednova.norm import NORM_METRIC, client_norm, normalize
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.settings import ClientConfig
from fedllm.types import ClientId, ClientUpdate


class StepRates(TrainHook):
    """Records the learning rate of every optimizer step (the schedule's, as stepped)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def after_step(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        self.lrs.append(lr)


class FedNovaPlugin(ClientPlugin):
    """Sends ``delta / a_i`` with ``a_i`` in the metrics, ``a_i`` from the learning rates
    the client's steps actually took (see :mod:`fedllm.algorithms.fednova.norm`).

    Args:
        cfg: the local training settings (optimizer, momentum, FedProx mu, weight decay,
            base learning rate).
        normalize: ``server.normalize``: ``fednova`` (the paper's SGD norms) or
            ``fednova_steps`` (learning-rate-weighted steps, any optimizer).
    """

    name = "fednova"
    public_metrics = frozenset({NORM_METRIC})  # a function of the config and the steps

    def __init__(self, cfg: ClientConfig, normalize: str = "fednova") -> None:
        self.cfg = cfg
        self.normalize = normalize
        self.rates: dict[ClientId, StepRates] = {}

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        self.rates[ctx.client_id] = StepRates()
        return self.rates[ctx.client_id]

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        lrs = self.rates.pop(ctx.client_id).lrs
        if len(lrs) != int(update.metrics["steps"]):
            raise RuntimeError(
                f"FedNova saw {len(lrs)} optimizer steps of client {ctx.client_id!r}, "
                f"the trainer reports {update.metrics['steps']:g}"
            )
        return normalize(update, client_norm(self.cfg, self.normalize, lrs))
