"""SCAFFOLD (``client.drift_correction = "scaffold"``): control variates on both sides."""

from __future__ import annotations

from fedllm.components import ALGORITHMS
from fedllm.config import Config
from fedllm.federation.algorithms.base import Algorithm, AlgorithmSetup


@ALGORITHMS.register("scaffold")
class Scaffold:
    """Karimireddy et al. 2020, option II (see :mod:`fedllm.client.scaffold`)."""

    order = 20

    def setting(self, config: Config) -> str | None:
        on = config.client.drift_correction == "scaffold"
        return "client.drift_correction = 'scaffold'" if on else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.client.plugins.scaffold import ScaffoldPlugin
        from fedllm.server.plugins.scaffold import ScaffoldServer

        if setup.ws.config.client.drift_correction != "scaffold" or setup.mode != "federated":
            return None
        server = ScaffoldServer(setup.shared, len(setup.clients))
        return Algorithm("scaffold", client=ScaffoldPlugin(), server=server)
