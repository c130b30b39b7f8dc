"""Client availability: which clients are online in a round.

Two sources, both pure functions of the round (and the seed), so a resumed
run sees the same clients online as the uninterrupted one:

- a trace file (``server.availability_file``): a JSON object mapping each
  round number to the list of client ids online in it, e.g.
  ``{"1": ["a", "b"], "2": [], "3": ["c"]}``. Every round of the run must be
  listed (an empty list: nobody is online); rounds past the run are allowed.
- a seeded synthetic trace (``server.availability = p``): each client is
  online in each round independently with probability ``p``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedllm.seeding import derive_seed
from fedllm.settings import ConfigError
from fedllm.types import ClientId

FILE_KEY = "server.availability_file"
EXAMPLE = '{"1": ["client-a", "client-b"], "2": [], "3": ["client-c"]}'
SHOWN_IDS = 20
"""Most valid client ids listed in an error message."""


class Availability(Protocol):
    """Who is online in a round."""

    def online(self, round_num: int) -> list[ClientId]:
        """The clients online in round ``round_num`` (1-based), in client order."""
        ...


class TraceAvailability:
    """Online clients read from a trace: round -> client ids.

    Args:
        rounds: the online clients of each listed round, in client order.
        source: where the trace came from, for error messages.
    """

    def __init__(self, rounds: Mapping[int, Sequence[ClientId]], source: str) -> None:
        self.rounds = {r: list(ids) for r, ids in rounds.items()}
        self.source = source

    def online(self, round_num: int) -> list[ClientId]:
        if round_num not in self.rounds:
            raise ConfigError(
                f"config error: {FILE_KEY} = {self.source!r} has no entry for round {round_num}"
            )
        return list(self.rounds[round_num])


class BernoulliAvailability:
    """Each client online in each round independently with probability ``p``.

    The coin of (round, client) is ``derive_seed(seed, "online", round, client) / 2**63``,
    a uniform number in [0, 1): a client's availability does not depend on
    which other clients exist or on their order.
    """

    def __init__(self, clients: Sequence[ClientId], p: float, seed: int) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"availability must be in (0, 1], got {p}")
        self.clients = list(clients)
        self.p = p
        self.seed = seed

    def online(self, round_num: int) -> list[ClientId]:
        return [
            cid
            for cid in self.clients
            if derive_seed(self.seed, "online", round_num, cid) / 2**63 < self.p
        ]


def read_trace(path: str | Path, clients: Sequence[ClientId], rounds: int) -> TraceAvailability:
    """Read and check a JSON trace file for a run of ``rounds`` rounds.

    Raises:
        ConfigError: naming the file and the entry: a missing or unreadable
            file, bad JSON, a round that is not a positive integer or is listed
            twice, a value that is not a list of client id strings, an unknown
            or repeated client id, or a round of the run with no entry.
    """
    where = f"config error: {FILE_KEY} = {str(path)!r}"
    text = _read_text(Path(path), where)
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{where} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    if not isinstance(pairs, _Pairs):
        raise ConfigError(
            f"{where}: expected a JSON object mapping rounds to lists of online client ids, "
            f"e.g. {EXAMPLE}; got {_kind(pairs)}"
        )
    order = {cid: i for i, cid in enumerate(clients)}
    trace: dict[int, list[ClientId]] = {}
    for key, value in pairs:
        round_num = _round_number(key, where)
        if round_num in trace:
            raise ConfigError(f"{where}: round {round_num} is listed twice (entry {key!r})")
        trace[round_num] = _online_ids(value, f"{where}, round {key!r}", order)
    missing = [r for r in range(1, rounds + 1) if r not in trace]
    if missing:
        raise ConfigError(
            f"{where} has no entry for round(s) {_show(missing)} of server.rounds = {rounds}; "
            "list every round (an empty list means no client is online)"
        )
    return TraceAvailability(trace, str(path))


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, so repeated keys are seen."""


def _read_text(path: Path, where: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where} is not UTF-8 text ({err})") from None


def _round_number(key: str, where: str) -> int:
    try:
        round_num = int(key)
    except ValueError:
        round_num = 0
    if round_num < 1:
        raise ConfigError(
            f"{where}: entry {key!r} is not a round number; keys are rounds 1, 2, ... "
            f"as strings, e.g. {EXAMPLE}"
        )
    return round_num


def _online_ids(value: Any, where: str, order: Mapping[ClientId, int]) -> list[ClientId]:
    """The entry's client ids in client order, each checked."""
    if not isinstance(value, list) or isinstance(value, _Pairs):
        raise ConfigError(f"{where}: expected a list of client ids, got {_kind(value)}")
    seen: set[ClientId] = set()
    for i, cid in enumerate(value, start=1):
        if not isinstance(cid, str):
            raise ConfigError(f"{where}, item {i}: expected a client id string, got {_kind(cid)}")
        if cid not in order:
            hint = difflib.get_close_matches(cid, list(order), n=1)
            tail = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}, item {i}: unknown client {cid!r}{tail}; "
                f"valid client ids: {_show(list(order))}"
            )
        if cid in seen:
            raise ConfigError(f"{where}, item {i}: client {cid!r} is listed twice")
        seen.add(cid)
    return sorted(seen, key=order.__getitem__)


def _kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words, with the value if short."""
    if isinstance(value, _Pairs):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{json.dumps(value)}"


def _show(items: Sequence[object]) -> str:
    shown = ", ".join(map(str, items[:SHOWN_IDS]))
    return shown if len(items) <= SHOWN_IDS else f"{shown}, ... ({len(items)} in all)"
