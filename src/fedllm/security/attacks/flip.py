"""Response flipping: a dirty-label attack on instruction data, the text counterpart of
label flipping (Biggio et al. 2012, "Poisoning Attacks against Support Vector
Machines"; Tolpegin et al. 2020, "Data Poisoning Attacks Against Federated Learning
Systems"): a poisoned record keeps its prompt and gets the reply of another record.

Per affected client, a derangement ``pi`` of its ``m`` records that have a reply is drawn
from the run seed (a uniformly drawn permutation with no fixed point: permutations are
drawn until one has none); a poisoned record ``i`` gets the reply of record ``pi(i)``
as it was before any change (another record by position; two records may hold the same
text). A client with fewer than 2 such records has no other reply to take and is left
as it is. Which records: :mod:`.poison`.

No success rate: the attack is untargeted, and its effect is on utility, measured by
the clean held-out and test losses every evaluation reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedllm.components import ATTACKS
from fedllm.security.attacks.chat import last_exchange, poisoned, reply_of
from fedllm.settings import Section

if TYPE_CHECKING:
    import numpy as np

    from fedllm.data.sources import Record
    from fedllm.security.attacks.poison import Generate

MAX_DRAWS = 10_000
"""Permutations drawn before giving up on a derangement (each has one with probability
about 1/e; reaching this is a bug)."""


class FlipSettings(Section):
    """``[attack.flip]``: nothing to set (an empty table is allowed)."""


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A permutation of ``range(n)`` with no fixed point, uniform over them (``n >= 2``).

    Raises:
        ValueError: ``n < 2`` (no derangement exists).
    """
    if n < 2:
        raise ValueError(f"no derangement of {n} element(s)")
    for _ in range(MAX_DRAWS):
        order = rng.permutation(n)
        if all(int(order[i]) != i for i in range(n)):
            return [int(j) for j in order]
    raise RuntimeError(f"no derangement of {n} found in {MAX_DRAWS} draws")


@ATTACKS.register("flip")
class Flip:
    """``attack.data = "flip"``."""

    name = "flip"
    kind = "data"
    settings = FlipSettings
    matched = ""
    success = None

    def __init__(self, settings: FlipSettings | None = None) -> None:
        self.config = settings or FlipSettings()

    def eligible(self, record: Record) -> bool:
        return last_exchange(record) is not None

    def poison(
        self, train: list[Record], chosen: Sequence[int], rng: np.random.Generator
    ) -> list[Record]:
        replies = [i for i, r in enumerate(train) if self.eligible(r)]
        if len(replies) < 2 or not chosen:
            return list(train)
        source = derangement(len(replies), rng)
        slot = {row: k for k, row in enumerate(replies)}
        out = list(train)
        for i in chosen:
            reply = reply_of(train[replies[source[slot[i]]]])
            out[i] = poisoned(train[i], self.name, reply=reply)
        return out

    def measure(self, test: list[Record], generate: Generate, seed: int) -> dict[str, float]:
        del test, generate, seed
        return {}
