"""Gaussian noise (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS: the "Gaussian" Byzantine worker; Li et al. 2019,
RSA's Gaussian attack).

``mode = "replace"`` (the papers'): the malicious client sends ``N(0, std^2 I)``, its
training thrown away. ``mode = "add"``: it sends ``x + N(0, std^2 I)``, its update hidden
in noise. ``std`` is per entry, in the update's own units (LoRA deltas are small: a
clean run's update norms say what is large). The noise is drawn from a seed derived from
the run seed, the client and the round (reproducible; no guarantee rests on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    from fedllm.security.attacks.update import Sight
    from fedllm.types import Params


class NoiseSettings(Section):
    """``[attack.noise]``."""

    std: float = Field(1.0, gt=0, description="Standard deviation of each entry's noise.")
    mode: Literal["replace", "add"] = Field(
        "replace",
        description="'replace': send the noise alone (the papers' Gaussian attack); 'add': "
        "send the trained update plus the noise.",
    )


@ATTACKS.register("noise")
class Noise:
    """``attack.update = "noise"``: send ``N(0, std^2)`` (or the update plus it)."""

    kind = "update"
    colluding = False
    remembers_broadcast = False
    settings = NoiseSettings

    def __init__(self, settings: NoiseSettings | None = None) -> None:
        chosen = settings or NoiseSettings()
        self.std, self.mode = chosen.std, chosen.mode

    def craft(self, delta: Params, sight: Sight) -> Params:
        import torch

        from fedllm.seeding import derive_seed

        generator = torch.Generator().manual_seed(derive_seed(sight.seed, "attack", "noise"))
        out: Params = {}
        for name, tensor in delta.items():  # in the update's order: one stream per client
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            noise = (noise * self.std).to(tensor.dtype)
            out[name] = noise if self.mode == "replace" else tensor + noise
        return out
