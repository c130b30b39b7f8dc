"""Injected client dropouts, so every protocol is tested with clients that vanish.

A client drops in a round and phase either because a trace says so
(``server.dropout_trace``: round -> clients) or by a seeded draw with
probability ``server.dropout`` (the same for every phase of a round: a client
that dropped does not come back within it). Evaluation is a measurement, not a
step of the protocol: simulated dropouts never hit it (real ones on Flower do, and
the metrics say how many clients were missing).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedllm.client.evaluate import EVALUATE
from fedllm.seeding import derive_seed
from fedllm.server.settings import ServerConfig
from fedllm.types import ClientId


@dataclass(frozen=True)
class DropoutPlan:
    """Who drops when.

    Attributes:
        probability: chance that a sampled client drops in a round, in [0, 1).
        trace: round -> clients that drop in it (instead of the draw, where given).
        seed: the run seed (each draw derives from it, the round and the client).
        phases: the phases in which drops happen (empty: every phase).
    """

    probability: float = 0.0
    trace: Mapping[int, Sequence[ClientId]] = field(default_factory=dict)
    seed: int = 0
    phases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.probability < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {self.probability}")

    @property
    def active(self) -> bool:
        """True when any client can drop."""
        return self.probability > 0 or bool(self.trace)

    def drops(self, client_id: ClientId, round_num: int, phase: str) -> str | None:
        """Why ``client_id`` drops in this round and phase, or None if it answers."""
        if phase == EVALUATE or (self.phases and phase not in self.phases):
            return None
        if self.trace:
            if client_id in self.trace.get(round_num, ()):
                return f"dropped by the dropout trace in round {round_num}"
            return None
        if self.probability == 0:
            return None
        draw = random.Random(derive_seed(self.seed, "dropout", round_num, client_id)).random()
        if draw < self.probability:
            return f"dropped (injected, probability {self.probability})"
        return None


def dropout_plan(cfg: ServerConfig, seed: int) -> DropoutPlan | None:
    """The simulated dropouts ``[server]`` asks for, or None."""
    trace = {int(r): list(c) for r, c in cfg.dropout_trace.items()}
    plan = DropoutPlan(cfg.dropout, trace, seed, tuple(cfg.dropout_phases))
    return plan if plan.active else None
