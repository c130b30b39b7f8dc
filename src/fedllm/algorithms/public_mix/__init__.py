"""Public examples in every client batch (``public.mix_ratio > 0``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("public_mix")
class PublicMixing:
    """Every mode: each client (or the pooled one) mixes the public corpus in."""

    order = 60

    def setting(self, config: Config) -> str | None:
        ratio = config.public.mix_ratio
        return f"public.mix_ratio = {ratio}" if config.public.source and ratio > 0 else None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.public_mix.client import PublicMixPlugin
        from fedllm.algorithms.public_mix.mix import public_mix

        mix = public_mix(setup.ws.config, setup.ws.public)
        return Algorithm("public_mix", client=PublicMixPlugin(mix)) if mix is not None else None
