"""FedProx (``client.prox_mu > 0``): a proximal term in every client's objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("fedprox")
class FedProx:
    """Li et al. 2020; applies in every mode (clients training alone stay near their
    round's start too)."""

    order = 50

    def setting(self, config: Config) -> str | None:
        mu = config.client.prox_mu
        return f"client.prox_mu = {mu}" if mu > 0 else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.fedprox.client import ProxPlugin

        mu = setup.ws.config.client.prox_mu
        return Algorithm("fedprox", client=ProxPlugin(mu)) if mu > 0 else None
