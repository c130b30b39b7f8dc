"""FreeLB adversarial training on each client (``[algorithm.freelb]``).

Zhu, Cheng, Gan, Sun, Goldstein, Liu. *FreeLB: Enhanced Adversarial Training for
Natural Language Understanding.* ICLR 2020, Algorithm 1. For each micro-batch ``X``:
``delta_0 = U(-sigma, sigma) / sqrt(N_delta)``; for ``t = 1..K``: accumulate
``g_t = g_{t-1} + (1/K) grad_theta L(X + delta_{t-1})``, then
``delta_t = Pi_{||delta|| <= eps}(delta_{t-1} + alpha g_adv / ||g_adv||)``; the optimizer
steps on ``g_K``. ``K`` ascent steps cost about ``K`` forward and backward passes
(``benchmarks/freelb.py`` measures it).

What fedllm does, as the authors' code does: the norms are each example's Frobenius
norm over its tokens and hidden size; ``N_delta`` is the example's real tokens times the
hidden size, and the start is zero on padding; the last pass takes no ascent step (its
delta would not be used); ``epsilon = 0`` means no projection. As the paper's section
3.3 asks, every pass of a micro-batch draws the same dropout masks (the RNG is rewound).
Differences: only the L2 ball (the code's L-infinity variant is not offered); the
trainer's ``train_loss`` is the mean loss of the ``K`` perturbed passes; the clean loss
``L(X)`` is not added (the paper does not add it either). Runs with ``client.fp16``
are refused: the passes are back-propagated without the fp16 loss scaler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.settings import Section

if TYPE_CHECKING:
    from fedllm.config import Config

NAME = "freelb"


class FreeLBSettings(Section):
    """``[algorithm.freelb]``; on when ``steps >= 1``."""

    steps: int = Field(
        0,
        ge=0,
        description="K, ascent steps (forward and backward passes) per micro-batch; 0: off.",
    )
    step_size: float = Field(
        0.1, gt=0, description="alpha, the L2 length of each ascent step on an example's delta."
    )
    epsilon: float = Field(
        1.0,
        ge=0,
        description="The bound on each example's ||delta|| (L2 over its tokens and hidden "
        "size, in embedding units); 0: no bound.",
    )
    init: float = Field(
        0.1,
        ge=0,
        description="sigma: delta starts uniform in [-sigma, sigma] / sqrt(tokens x hidden) "
        "on each example's real tokens; 0: at zero.",
    )


@ALGORITHMS.register(NAME)
class FreeLB:
    """Zhu et al. 2020; applies in every mode (a client's own training)."""

    order = 8  # it computes the gradients: before hooks that add to them (FedProx)
    settings = FreeLBSettings

    def setting(self, config: Config) -> str | None:
        steps = config.settings_of(NAME).steps
        return f"algorithm.freelb.steps = {steps}" if steps > 0 else None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [("local_dp", "DP-SGD computes each example's gradient itself")]

    def problem(self, config: Config) -> str | None:
        if not config.client.fp16:
            return None
        return (
            f"algorithm.freelb.steps = {config.settings_of(NAME).steps} cannot be combined "
            "with client.fp16 = true (its passes are back-propagated without the fp16 loss "
            "scaler); use client.bf16 instead"
        )

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.embeds import input_embeddings
        from fedllm.security.freelb.client import FreeLBPlugin

        config = setup.ws.config
        settings = config.settings_of(NAME)
        if settings.steps == 0:
            return None
        embeddings = input_embeddings(setup.ws.model, f"algorithm.freelb.steps = {settings.steps}")
        return Algorithm(NAME, client=FreeLBPlugin(embeddings, settings, config.client.grad_accum))
