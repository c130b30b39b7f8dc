"""FedNova (``server.normalize = "fednova"``): normalised updates, rescaled mean."""

from __future__ import annotations

from fedllm.components import ALGORITHMS
from fedllm.config import Config
from fedllm.federation.algorithms.base import Algorithm, AlgorithmSetup


@ALGORITHMS.register("fednova")
class FedNova:
    """Wang et al. 2020 (see :mod:`fedllm.client.fednova`)."""

    order = 30

    def setting(self, config: Config) -> str | None:
        return "server.normalize = 'fednova'" if config.server.normalize == "fednova" else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.client.fednova import NORM_METRIC
        from fedllm.client.plugins.fednova import FedNovaPlugin
        from fedllm.server.plugins.fednova import FedNovaServer

        config = setup.ws.config
        if config.server.normalize != "fednova" or setup.mode != "federated":
            return None
        return Algorithm(
            "fednova", client=FedNovaPlugin(config.client), server=FedNovaServer(NORM_METRIC)
        )
