"""Messages: everything that crosses between server and clients.

A message holds three records, named like Flower's: ``arrays`` (named tensors:
a model state, a delta, a control variate), ``config`` (scalars, strings and
bytes: the round, a stage's clip norm, a candidate table) and ``metrics``
(named floats: a loss, a step count). Plug-ins put their parts under their
own key prefix (``scaffold/...``, see :func:`fedllm.types.split_parts`) so parts
never collide. :mod:`fedllm.wire`
encodes a message and counts its bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedllm.types import Params

ConfigValue = bool | int | float | str | bytes
"""A value a message's config record can carry."""

ROUND = "round"
"""Config key of the round a broadcast belongs to (every engine needs it)."""


@dataclass
class Message:
    """One message between the server and a client.

    Attributes:
        arrays: named tensors.
        config: named scalars, strings and bytes.
        metrics: named floats.
    """

    arrays: Params = field(default_factory=dict)
    config: dict[str, ConfigValue] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def round(self) -> int:
        """The round in the config (0 when absent)."""
        value = self.config.get(ROUND, 0)
        return value if isinstance(value, int) else 0


@dataclass(frozen=True)
class Dropped:
    """A client that did not answer (it went offline, timed out, or crashed).

    Attributes:
        reason: what happened, for the round's record.
    """

    reason: str


Reply = Message | Dropped
"""What an engine yields for each client: its answer, or that it dropped."""
