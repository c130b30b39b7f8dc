"""Canaries for the leakage audit: random secrets drawn from the run seed and inserted
into chosen clients' training records (Carlini et al. 2019, "The Secret Sharer").

The settings are ``privacy.canaries`` and ``privacy.canary_*``; the config hands them
to the data build as a :class:`CanarySpec` (``DataConfig.canary_spec``). Which
canaries a run gets depends only on the spec, the seed and the clients named, never
on the corpus, so the audit can read them back from the run and check them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedllm.data.sources import Record
from fedllm.settings import check_client_names

SECRET = "{secret}"
"""The placeholder of the template that the random secret replaces."""

CANARY_KEY = "canary"
"""The field a canary record carries (its canary's id); encoding ignores it."""

CHAT_PROMPT = "Remember this."
"""The user turn a chat canary answers (the canary text is the assistant's reply)."""

_STAGE_CANARY = 7
"""Seed stage of the canary draw (the data build's other stages are 1 and 2)."""


@dataclass(frozen=True)
class CanarySpec:
    """What to insert, from the ``[privacy]`` section.

    Attributes:
        count: distinct canaries inserted (0: none).
        repeats: copies of each in its client's training split.
        clients: client ids that get canaries; empty: the first client in sorted order.
        template: the text, holding :data:`SECRET` once.
        digits: digits of each secret.
        controls: canaries drawn like the others but inserted nowhere.
        candidates: secrets each canary is ranked among by the audit.
    """

    count: int
    repeats: int
    clients: tuple[str, ...]
    template: str
    digits: int
    controls: int
    candidates: int

    @property
    def prefix(self) -> str:
        """The template's text before the secret (what an extraction prompts with)."""
        return self.template.split(SECRET)[0]


@dataclass(frozen=True)
class Canary:
    """One drawn canary.

    Attributes:
        id: ``canary-<i>`` (inserted) or ``control-<i>`` (inserted nowhere).
        secret: the random digits.
        text: the template with the secret.
        client: the client whose training split holds it (None for a control).
        repeats: copies inserted (0 for a control).
        kind: how it is encoded: ``"chat"`` (the reply to :data:`CHAT_PROMPT`) or
            ``"text"`` (a text record: text data, or ``data.format = 'text'``).
    """

    id: str
    secret: str
    text: str
    client: str | None
    repeats: int
    kind: str = "chat"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Canary:
        return cls(
            id=str(raw["id"]),
            secret=str(raw["secret"]),
            text=str(raw["text"]),
            client=None if raw.get("client") is None else str(raw["client"]),
            repeats=int(raw["repeats"]),
            kind=str(raw.get("kind", "chat")),
        )


def fill(template: str, secret: str) -> str:
    """``template`` with ``secret`` in place of :data:`SECRET`."""
    return template.replace(SECRET, secret)


def canary_clients(spec: CanarySpec, clients: Sequence[str]) -> list[str]:
    """The clients that get canaries, checked against the federation's.

    Raises:
        ConfigError: ``privacy.canary_clients`` names a client the federation lacks
            (naming the valid ids).
    """
    known = sorted(clients)
    if not spec.clients:
        return known[:1]
    check_client_names("privacy.canary_clients", spec.clients, known)
    return list(spec.clients)


def draw_canaries(
    spec: CanarySpec, clients: Sequence[str], seed: int, kind: str = "chat"
) -> list[Canary]:
    """``spec.count`` canaries (round-robin over ``clients``) then ``spec.controls``
    controls, with distinct secrets drawn from ``seed``.

    Args:
        spec: what to draw.
        clients: the clients that get canaries (:func:`canary_clients`), in order.
        seed: the run seed.
        kind: how the canaries are encoded (:attr:`Canary.kind`).
    """
    rng = np.random.default_rng([seed % 2**63, _STAGE_CANARY])
    total = spec.count + spec.controls
    secrets: list[str] = []
    seen: set[str] = set()
    while len(secrets) < total:
        secret = "".join(str(d) for d in rng.integers(0, 10, size=spec.digits))
        if secret not in seen:
            seen.add(secret)
            secrets.append(secret)
    out = [
        Canary(
            f"canary-{i}", s, fill(spec.template, s), clients[i % len(clients)], spec.repeats, kind
        )
        for i, s in enumerate(secrets[: spec.count])
    ]
    out += [
        Canary(f"control-{i}", s, fill(spec.template, s), None, 0, kind)
        for i, s in enumerate(secrets[spec.count :])
    ]
    return out


def canary_record(text: str, kind: str, canary_id: str | None = None) -> Record:
    """A record of the task's kind holding ``text``: a chat whose assistant reply it is
    (to :data:`CHAT_PROMPT`), or a text record."""
    record: Record
    if kind == "chat":
        record = {
            "messages": [
                {"role": "user", "content": CHAT_PROMPT},
                {"role": "assistant", "content": text},
            ]
        }
    else:
        record = {"text": text}
    if canary_id is not None:
        record[CANARY_KEY] = canary_id
    return record


def with_canaries(
    train: list[Record], canaries: Sequence[Canary], client: str, seed: int
) -> list[Record]:
    """``train`` with ``repeats`` copies of each of ``client``'s canaries at seeded
    positions (the records already there keep their order)."""
    mine = [c for c in canaries if c.client == client]
    if not mine:
        return train
    inserted = [canary_record(c.text, c.kind, c.id) for c in mine for _ in range(c.repeats)]
    rng = np.random.default_rng([seed % 2**63, _STAGE_CANARY, len(train), len(inserted)])
    total = len(train) + len(inserted)
    at = set(rng.choice(total, size=len(inserted), replace=False).tolist())
    plain, extra = iter(train), iter(inserted)
    return [next(extra) if i in at else next(plain) for i in range(total)]


def count_canary_records(records: Sequence[Record]) -> int:
    """Records that are inserted canaries."""
    return sum(CANARY_KEY in r for r in records)
