"""Model poisoning on the update: what an update attack is, and what it may see.

Two shapes, told apart by the registered entry's ``colluding`` flag:

- an attack on the client's **own update** (sign flip, scaling, Gaussian noise, free
  riding) sees only what a real malicious client sees: its trained update and the
  broadcasts it was sent (:class:`Sight`). It runs in the client's ``after_train``
  (:mod:`.own_update`), before the client's pipeline halves (clip, masking), so it composes
  with SecAgg+ and CKKS;
- a **colluding** attack (ALIE, IPM, min-max, min-sum) crafts one vector from the
  malicious clients' own honest updates, shared out of band, and every malicious client
  of the round sends it (:mod:`.collusion`). The papers' *partial knowledge* setting: the
  colluders know nothing of the benign clients' updates, only how many updates the round
  has.

Every registered update attack has ``kind = "update"``, ``colluding`` and optionally
``settings`` (its ``[attack.<name>]`` model); it is built as ``cls(settings)`` (or
``cls()`` without settings). Nothing here imports torch at module level: the config
reads ``colluding`` at load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fedllm.components import ATTACKS

NAME = "update_attack"
"""The registered algorithm's name: its client and server halves' too."""

if TYPE_CHECKING:
    import torch

    from fedllm.config import Config
    from fedllm.types import ClientId, Params


@dataclass
class Sight:
    """What a malicious client knows when it crafts its update.

    Attributes:
        client_id: the client.
        round: the round (1-based).
        seed: a seed derived from the run seed, the client and the round.
        broadcast: the state it was sent this round (as earlier plug-ins left it);
            kept only for attacks with ``remembers_broadcast`` (empty otherwise).
        previous: the state it was sent the last time it was sampled before, or None
            (the first time; and for attacks without ``remembers_broadcast``).
        cohort: the clients the server samples per round (the recipe is public).
        server_lr: the server learning rate (the recipe's ``server.lr``).
    """

    client_id: ClientId
    round: int
    seed: int
    broadcast: Params = field(default_factory=dict)
    previous: Params | None = None
    cohort: int = 1
    server_lr: float = 1.0


class OwnUpdateAttack(Protocol):
    """An attack one malicious client mounts alone, on its own update."""

    colluding: bool
    remembers_broadcast: bool

    def craft(self, delta: Params, sight: Sight) -> Params:
        """The update to send instead of ``delta`` (the trained one)."""
        ...


class CollusionAttack(Protocol):
    """An attack the malicious clients of a round mount together."""

    colluding: bool

    def craft(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """The one flat update every colluder sends, from ``rows`` (``[m, d]``: the
        colluders' own honest updates, flattened) and ``n`` (the updates in the round,
        colluders included)."""
        ...


def is_colluding(name: str) -> bool:
    """Whether the registered update attack ``name`` needs the colluders' channel."""
    return bool(getattr(ATTACKS.get(name), "colluding", False))


def build_attack(config: Config) -> Any:
    """The attack ``attack.update`` names, built with its ``[attack.<name>]`` settings."""
    name = config.attack.update
    entry = ATTACKS.get(name)
    if getattr(entry, "settings", None) is None:
        return entry()
    return entry(config.attack_settings_of(name))
