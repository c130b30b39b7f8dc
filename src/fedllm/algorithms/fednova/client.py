"""FedNova, client half: the update divided by its step norm ``a_i``."""

from __future__ import annotations

from fedllm.algorithms.fednova.norm import NORM_METRIC, normalize
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.settings import ClientConfig
from fedllm.types import ClientUpdate


class FedNovaPlugin(ClientPlugin):
    """Sends ``delta / a_i`` with ``a_i`` in the metrics (see
    :mod:`fedllm.algorithms.fednova.norm`).

    Args:
        cfg: the local training settings (optimizer, momentum, FedProx mu, lr).
    """

    name = "fednova"
    public_metrics = frozenset({NORM_METRIC})  # a function of the config and the steps

    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        return normalize(update, self.cfg)
