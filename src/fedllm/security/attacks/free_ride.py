"""Free riding (Lin et al. 2019, "Free-riders in Federated Learning: Attacks and
Defenses", arXiv:1911.12560; Fraboni et al. 2021, "Free-rider Attacks on Model
Aggregation in Federated Learning", AISTATS).

A free rider takes the global model without contributing. ``mode = "zero"``: it sends
the zero update (it returns the model it was sent; Fraboni et al.'s plain free rider).
``mode = "stale"``: it sends the last global step it saw, ``theta_t - theta_prev`` (the
broadcast of this round minus the broadcast it was sent the last time it was sampled;
Fraboni et al.'s free rider that imitates training with the global model's own
movement). The first time it is sampled it has no such difference and sends zero.

fedllm: the simulator still trains the client (the wall time is spent) and throws the
result away; what the server receives is exactly the zero or stale update. The client
keeps the broadcast it saw in its state slot (checkpointed, so a resumed run goes on
the same). Each tensor whose shape differs between the two broadcasts (or from the
update: a heterogeneous-rank slice) is sent as zeros. Not done: Fraboni et al.'s
disguised free rider (the stale step plus decaying noise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedllm.components import ATTACKS
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when an update is crafted
    from fedllm.security.attacks.update import Sight
    from fedllm.types import Params


class FreeRideSettings(Section):
    """``[attack.free_ride]``."""

    mode: Literal["zero", "stale"] = Field(
        "zero",
        description="'zero': send the zero update; 'stale': send this round's broadcast "
        "minus the one the client was sent the last time it was sampled (zero the first "
        "time).",
    )


@ATTACKS.register("free_ride")
class FreeRide:
    """``attack.update = "free_ride"``: send zero, or the last global step seen."""

    kind = "update"
    colluding = False
    settings = FreeRideSettings

    def __init__(self, settings: FreeRideSettings | None = None) -> None:
        self.mode = (settings or FreeRideSettings()).mode
        self.remembers_broadcast = self.mode == "stale"

    def craft(self, delta: Params, sight: Sight) -> Params:
        import torch

        out: Params = {}
        for name, tensor in delta.items():
            now = sight.broadcast.get(name)
            before = sight.previous.get(name) if sight.previous is not None else None
            if (
                self.mode == "stale"
                and now is not None
                and before is not None
                and now.shape == before.shape == tensor.shape
            ):
                out[name] = (now - before).to(tensor.dtype)
            else:
                out[name] = torch.zeros_like(tensor)
        return out
