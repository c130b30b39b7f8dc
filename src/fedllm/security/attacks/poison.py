"""Data poisoning before tokenizing: which clients and which of their training records
a data attack changes.

An affected client is a malicious one (``attack.placement = 'malicious'``, the clients of
:func:`~fedllm.security.attacks.targets.malicious_clients`) or every client
(``'everywhere'``: poisoning at collection, which no client knows of). Of an affected
client's training records, those the attack can change (:meth:`DataAttack.eligible`)
are counted, ``n``, and ``round(attack.share * n)`` of them (Python's ``round``: halves
to even) are drawn from the run seed and the client's id, then changed
(:meth:`DataAttack.poison`). Held-out and test records are never touched: the data
build hands a transform only the training records
(:data:`fedllm.data.build.TrainTransform`), before canaries are inserted. A changed
record carries ``poisoned = <attack name>``; the run's data summary counts them per
client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedllm.security.attacks.chat import require_chat
from fedllm.security.attacks.settings import AttackConfig
from fedllm.security.attacks.targets import malicious_clients
from fedllm.seeding import derive_seed

if TYPE_CHECKING:
    from fedllm.data.build import TrainTransform
    from fedllm.data.sources import Record
    from fedllm.security.attacks.success import SuccessSettings

Generate = Callable[[str], str]
"""A prompt (the user turn) -> the model's reply (greedy, a few tokens)."""


class DataAttack(Protocol):
    """A registered data attack (``attack.data``), built from its ``[attack.<name>]``
    settings.

    Attributes:
        name: its registered name (what poisoned records carry).
        kind: ``"data"``.
        matched: the text whose first words a reply must start with to count as the
            attack's success (sets the generation length); empty when the attack has
            no success rate.
        success: how its success is measured; None when it has no success rate.
    """

    name: str
    kind: str
    matched: str
    success: SuccessSettings | None

    def eligible(self, record: Record) -> bool:
        """Whether the attack can change ``record``."""
        ...

    def poison(
        self, train: list[Record], chosen: Sequence[int], rng: np.random.Generator
    ) -> list[Record]:
        """``train`` with the records at ``chosen`` changed (the others as they were)."""
        ...

    def measure(self, test: list[Record], generate: Generate, seed: int) -> dict[str, float]:
        """The attack's success rates on a model (its replies through ``generate``) over
        the held-out test records ``test``; ``{}`` when it defines none."""
        ...


def affected_clients(attack: AttackConfig, clients: Iterable[str], seed: int) -> list[str]:
    """The clients whose training records are poisoned, sorted: every client under
    ``placement = 'everywhere'``, else the malicious ones."""
    clients = sorted(clients)
    if attack.placement == "everywhere":
        return clients
    return malicious_clients(attack, clients, seed)


def choose(eligible: Sequence[int], share: float, rng: np.random.Generator) -> list[int]:
    """``round(share * len(eligible))`` of ``eligible`` drawn without replacement, sorted."""
    count = round(share * len(eligible))
    if count == 0:
        return []
    picked = rng.choice(np.asarray(eligible, dtype=np.int64), size=count, replace=False)
    return sorted(int(i) for i in picked)


def poison_clients(
    attack: DataAttack,
    kind: str,
    train: Mapping[str, list[Record]],
    affected: Iterable[str],
    share: float,
    seed: int,
) -> dict[str, list[Record]]:
    """Every client's training records, those of ``affected`` poisoned.

    Each affected client draws from its own generator (the run seed, the attack's name
    and the client's id): same seed, same poison, whatever the other clients hold.

    Raises:
        DataError: ``kind`` is not ``"chat"``.
    """
    require_chat(kind, attack.name)
    out = {cid: list(records) for cid, records in train.items()}
    for cid in affected:
        records = out[cid]
        rng = np.random.default_rng(derive_seed(seed, "attack", "data", attack.name, cid))
        eligible = [i for i, record in enumerate(records) if attack.eligible(record)]
        out[cid] = attack.poison(records, choose(eligible, share, rng), rng)
    return out


def poison_transform(attack: DataAttack, config: AttackConfig, seed: int) -> TrainTransform:
    """The data build's transform (:data:`fedllm.data.build.TrainTransform`) that
    poisons as ``config`` says, from the run ``seed``."""

    def transform(kind: str, train: Mapping[str, list[Record]]) -> dict[str, list[Record]]:
        affected = affected_clients(config, train, seed)
        return poison_clients(attack, kind, train, affected, config.share, seed)

    return transform
