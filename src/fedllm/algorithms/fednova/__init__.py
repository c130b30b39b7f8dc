"""FedNova (``server.normalize = "fednova"``): normalised updates, rescaled mean."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("fednova")
class FedNova:
    """Wang et al. 2020 (see :mod:`fedllm.algorithms.fednova.norm`)."""

    order = 30

    def setting(self, config: Config) -> str | None:
        return "server.normalize = 'fednova'" if config.server.normalize == "fednova" else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.fednova.client import FedNovaPlugin
        from fedllm.algorithms.fednova.norm import NORM_METRIC
        from fedllm.algorithms.fednova.server import FedNovaServer

        config = setup.ws.config
        if config.server.normalize != "fednova" or setup.mode != "federated":
            return None
        return Algorithm(
            "fednova", client=FedNovaPlugin(config.client), server=FedNovaServer(NORM_METRIC)
        )
