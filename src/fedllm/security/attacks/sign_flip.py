"""Sign flipping (Li et al. 2019, "RSA: Byzantine-Robust Stochastic Aggregation Methods
for Distributed Learning from Heterogeneous Datasets", AAAI).

A malicious client sends ``-x`` for its trained update ``x``: the step its data asks
for, reversed. The papers flip a gradient; fedllm flips the update (the delta against
the broadcast, every tensor of it), which is the same direction reversed. Needs only the
client's own update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ATTACKS

if TYPE_CHECKING:  # torch is imported when an update is crafted
    from fedllm.security.attacks.update import Sight
    from fedllm.types import Params


@ATTACKS.register("sign_flip")
class SignFlip:
    """``attack.update = "sign_flip"``: send ``-x``."""

    kind = "update"
    colluding = False
    remembers_broadcast = False

    def craft(self, delta: Params, sight: Sight) -> Params:
        return {name: -tensor for name, tensor in delta.items()}
