"""Each client's local optimizer state kept across rounds (``client.keep_optimizer_state``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("kept_optimizer")
class KeptOptimizer:
    """DiLoCo's inner optimizer; every mode."""

    order = 70

    def setting(self, config: Config) -> str | None:
        return "client.keep_optimizer_state = true" if config.client.keep_optimizer_state else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.kept_optimizer.client import KeptOptimizerPlugin

        if not setup.ws.config.client.keep_optimizer_state:
            return None
        return Algorithm("kept_optimizer", client=KeptOptimizerPlugin())
