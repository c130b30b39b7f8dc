"""SCAFFOLD (``client.drift_correction = "scaffold"``): control variates on both sides."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("scaffold")
class Scaffold:
    """Karimireddy et al. 2020, option II (see :mod:`fedllm.algorithms.scaffold.variates`)."""

    order = 20

    def setting(self, config: Config) -> str | None:
        on = config.client.drift_correction == "scaffold"
        return "client.drift_correction = 'scaffold'" if on else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.scaffold.client import ScaffoldPlugin
        from fedllm.algorithms.scaffold.server import ScaffoldServer

        if setup.ws.config.client.drift_correction != "scaffold" or setup.mode != "federated":
            return None
        server = ScaffoldServer(setup.shared, len(setup.clients))
        return Algorithm("scaffold", client=ScaffoldPlugin(), server=server)
