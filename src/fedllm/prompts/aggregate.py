"""The server's view: combine per-client score tables into one ranking.

Tables are ``{client: {candidate id: Score}}``; every client scores every
candidate. Lower is better for every aggregate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedllm.prompts.score import Score

Tables = Mapping[str, Mapping[str, Score]]
"""Client id -> candidate id -> that client's score."""

AGGREGATES = ("mean", "rank")


def pooled_loss(tables: Tables, candidate: str) -> float:
    """The candidate's loss over every client's answer tokens together (nats/token).

    Each client weighs by the answer tokens it scored.
    """
    loss = sum(t[candidate].loss_sum for t in tables.values())
    tokens = sum(t[candidate].tokens for t in tables.values())
    return loss / tokens if tokens else float("inf")


def client_ranks(table: Mapping[str, Score]) -> dict[str, float]:
    """Rank of each candidate on one client: 1 = lowest loss; ties share their mean rank."""
    ordered = sorted(table, key=lambda c: table[c].loss)
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and table[ordered[j + 1]].loss == table[ordered[i]].loss:
            j += 1
        for c in ordered[i : j + 1]:
            ranks[c] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mean_ranks(tables: Tables) -> dict[str, float]:
    """Each candidate's rank averaged over clients (Borda count, normalised)."""
    per_client = [client_ranks(t) for t in tables.values()]
    candidates = per_client[0] if per_client else {}
    return {c: sum(r[c] for r in per_client) / len(per_client) for c in candidates}


def aggregate(tables: Tables, how: str) -> dict[str, float]:
    """One score per candidate: ``mean`` = :func:`pooled_loss`, ``rank`` = :func:`mean_ranks`.

    Raises:
        ValueError: ``how`` is not an aggregate, or a client lacks some candidate.
    """
    if how not in AGGREGATES:
        raise ValueError(
            f"hard_prompt.aggregate = {how!r}; expected one of {', '.join(AGGREGATES)}"
        )
    check_complete(tables)
    if how == "rank":
        return mean_ranks(tables)
    candidates = next(iter(tables.values()), {})
    return {c: pooled_loss(tables, c) for c in candidates}


def order(tables: Tables, how: str, tie_order: Sequence[str]) -> list[str]:
    """Candidates best first by :func:`aggregate`; ties go to the pooled loss, then to
    the earlier candidate in ``tie_order``."""
    scores = aggregate(tables, how)
    position = {c: i for i, c in enumerate(tie_order)}
    return sorted(
        scores,
        key=lambda c: (scores[c], pooled_loss(tables, c), position.get(c, len(position))),
    )


def check_complete(tables: Tables) -> None:
    """Every client scored the same candidates.

    Raises:
        ValueError: naming a client whose candidates differ from the first's.
    """
    tables_list = list(tables.items())
    if not tables_list:
        return
    first = set(tables_list[0][1])
    for client, table in tables_list[1:]:
        if set(table) != first:
            missing = sorted(first - set(table)) or sorted(set(table) - first)
            raise ValueError(f"client {client} did not score the same candidates ({missing})")
