"""FedNova (``server.normalize = "fednova"``): normalised updates, rescaled mean.

Its ``a_i`` is defined for SGD (with momentum, FedProx and weight decay, at any
learning-rate schedule). Anything the norm cannot follow is refused when the config
loads: AdamW (unless the heuristic ``fednova_steps`` is named), a gradient clip that
would scale FedProx's term, a momentum buffer carried across rounds.
"""

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
        normalize = config.server.normalize
        return f"server.normalize = {normalize!r}" if normalize != "none" else None

    def problem(self, config: Config) -> str | None:
        client, normalize = config.client, config.server.normalize
        if normalize != "fednova":
            return None  # the heuristic takes any optimizer
        if client.optimizer != "sgd":
            return (
                f"server.normalize = 'fednova' defines a_i for SGD; client.optimizer = "
                f"{client.optimizer!r} has no such norm: set client.optimizer = 'sgd', or "
                "server.normalize = 'fednova_steps' to use the learning-rate-weighted local "
                "steps as a_i (a heuristic outside the paper)"
            )
        if client.prox_mu > 0 and client.max_grad_norm is not None:
            return (
                "server.normalize = 'fednova' with client.prox_mu > 0 and client.max_grad_norm "
                f"= {client.max_grad_norm}: the clip scales FedProx's term by a factor a_i "
                "cannot follow; set client.max_grad_norm = 'none'"
            )
        if client.keep_optimizer_state and client.momentum > 0:
            return (
                "server.normalize = 'fednova' with client.keep_optimizer_state = true and "
                "client.momentum > 0: the momentum carried in from earlier rounds moves the "
                "model by more than a_i counts; set client.keep_optimizer_state = false"
            )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.fednova.client import FedNovaPlugin
        from fedllm.algorithms.fednova.norm import NORM_METRIC
        from fedllm.algorithms.fednova.server import FedNovaServer

        config = setup.ws.config
        normalize = config.server.normalize
        if normalize == "none" or setup.mode != "federated":
            return None
        return Algorithm(
            "fednova",
            client=FedNovaPlugin(config.client, normalize),
            server=FedNovaServer(NORM_METRIC),
        )
