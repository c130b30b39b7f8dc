"""Scaling, or model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated
Learning", AISTATS).

The attacker wants the global model to become its own model ``X``. With FedAvg's
``G' = G + eta / n * sum_i (L_i - G)``, it submits ``L = gamma (X - G) + G`` with
``gamma = n / eta``: the others' updates nearly cancel near convergence, and ``G'``
is about ``X``. As a delta against the broadcast: the trained update times ``gamma``.

fedllm: ``factor`` is ``gamma``; left out, it is the paper's ``n / eta`` with ``n`` the
clients sampled per round (``server.clients_per_round``, at most the federation) and
``eta`` the server learning rate (``server.lr``): what the recipe tells any client.
That replaces the model only under the uniform mean with a plain (FedAvg) server step;
with example weights a client's share of the mean is ``w_i / sum w`` (the client does
not know the others' weights), and an adaptive server optimizer (FedAdam) rescales the
step. The attack then boosts by ``gamma`` all the same. Any training the client did
(poisoned data from ``attack.data``, e.g. a backdoor) is what is boosted.

``max_norm`` is the paper's constrain-and-scale against a server that bounds update norms
(its Section 4, "evading anomaly detection": an attacker who knows the server accepts
updates up to norm ``S`` scales by ``S / ||X - G||``): the boost is
``min(gamma, S / ||x||)``, with ``||x||`` the L2 norm over every tensor of the trained
update, so the update sent is at most ``S`` long and exactly ``S`` when ``gamma`` would
overshoot. The paper's other half, an anomaly term in the attacker's training loss, is
not done: the attacker trains on its poisoned data as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    from fedllm.security.attacks.update import Sight
    from fedllm.types import Params


class ScaleSettings(Section):
    """``[attack.scale]``."""

    factor: float | None = Field(
        None,
        description="The boost gamma on the trained update; none: the paper's n / eta "
        "(server.clients_per_round / server.lr), which replaces the model under the "
        "uniform mean and a FedAvg server step.",
    )
    max_norm: float | None = Field(
        None,
        gt=0,
        description="Constrain-and-scale: the longest update (L2 over every tensor) the "
        "attacker sends, e.g. the server's norm bound it knows; the boost is "
        "min(gamma, max_norm / ||update||). None: no constraint.",
    )


def replacement_factor(cohort: int, server_lr: float) -> float:
    """Bagdasaryan et al.'s ``gamma = n / eta``."""
    return cohort / server_lr


@ATTACKS.register("scale")
class Scale:
    """``attack.update = "scale"``: send ``gamma x``."""

    kind = "update"
    colluding = False
    remembers_broadcast = False
    settings = ScaleSettings

    def __init__(self, settings: ScaleSettings | None = None) -> None:
        settings = settings or ScaleSettings()
        self.factor = settings.factor
        self.max_norm = settings.max_norm

    def gamma(self, sight: Sight) -> float:
        """The boost this client applies before any norm constraint."""
        if self.factor is not None:
            return self.factor
        return replacement_factor(sight.cohort, sight.server_lr)

    def craft(self, delta: Params, sight: Sight) -> Params:
        gamma = self.gamma(sight)
        if self.max_norm is not None:
            from fedllm.pipeline.clip import global_norm  # imports torch

            norm = global_norm(delta)
            if norm > 0.0:
                gamma = min(gamma, self.max_norm / norm)
        return {name: tensor * gamma for name, tensor in delta.items()}
