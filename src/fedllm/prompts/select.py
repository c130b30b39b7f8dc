"""The server loop of a hard-prompt selection: score, keep the best, mutate, score again.

The server sends candidate instructions to every client and receives only
score tables (see :class:`fedllm.prompts.score.PromptClient`); no example
crosses the wire. Each scoring round is one ``score`` phase on an engine (the
simulator, or any other), and bytes both ways are counted per client from the
messages' encoding. A client that drops is left out from then on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedllm.config import HardPromptConfig
from fedllm.message import ROUND, Dropped, Message
from fedllm.prompts.aggregate import client_ranks, mean_ranks, order, pooled_loss
from fedllm.prompts.candidates import Candidate, candidate_id
from fedllm.prompts.mutate import propose
from fedllm.prompts.score import BASELINE_ID, CANDIDATES, SCORE, SCORES, Score
from fedllm.protocol.engine import Engine
from fedllm.types import ClientId
from fedllm.wire import decode_scores, encode_texts, message_bytes, try_message_bytes


class SelectionError(ValueError):
    """A selection that cannot run, or a client reply the server refuses."""


@dataclass
class Ranked:
    """One candidate's place in the final ranking.

    Attributes:
        candidate: the candidate.
        position: 1 = chosen.
        score: the aggregate it was ranked by (nats/token for ``mean``, mean rank for ``rank``).
        loss: pooled answer loss over all clients (nats/token).
        mean_rank: mean of its rank on each client (1 = best on that client).
        per_client: client id -> its answer loss on that client (nats/token).
        client_rank: client id -> its rank on that client.
    """

    candidate: Candidate
    position: int
    score: float
    loss: float
    mean_rank: float
    per_client: dict[str, float]
    client_rank: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "id": self.candidate.id,
            "text": self.candidate.text,
            "origin": self.candidate.origin,
            "round": self.candidate.round,
            "score": self.score,
            "loss": self.loss,
            "mean_rank": self.mean_rank,
            "client_loss": self.per_client,
            "client_rank": self.client_rank,
        }


@dataclass
class Selection:
    """The outcome of a selection.

    Attributes:
        aggregate: ``mean`` or ``rank``.
        keep: how many best candidates were kept.
        ranking: every candidate, best first.
        baseline: client id -> score of the chats with no instruction inserted.
        bytes_up: client id -> bytes of the score tables it sent.
        bytes_down: client id -> bytes of the instructions it received.
        rounds: per round (0 = initial pool): new candidates, best so far, seconds.
    """

    aggregate: str
    keep: int
    ranking: list[Ranked]
    baseline: dict[str, Score]
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen(self) -> Ranked:
        return self.ranking[0]

    @property
    def kept(self) -> list[Ranked]:
        return self.ranking[: self.keep]

    def baseline_loss(self) -> float:
        """Pooled answer loss with no instruction (nats/token)."""
        return pooled_loss({c: {BASELINE_ID: s} for c, s in self.baseline.items()}, BASELINE_ID)

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.to_json(),
            "aggregate": self.aggregate,
            "kept": [r.candidate.id for r in self.kept],
            "baseline": {
                "loss": self.baseline_loss(),
                "client_loss": {c: s.loss for c, s in self.baseline.items()},
            },
            "clients": {
                c: {
                    "tokens": s.tokens,
                    "bytes_up": self.bytes_up[c],
                    "bytes_down": self.bytes_down[c],
                }
                for c, s in self.baseline.items()
            },
            "bytes_up": sum(self.bytes_up.values()),
            "bytes_down": sum(self.bytes_down.values()),
            "rounds": self.rounds,
            "candidates": [r.to_json() for r in self.ranking],
        }


def select_prompt(
    initial: Sequence[Candidate],
    clients: Sequence[ClientId],
    engine: Engine,
    cfg: HardPromptConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> Selection:
    """Score ``initial`` on every client, then run ``cfg.mutation_rounds`` rounds of
    mutating the ``cfg.keep`` best and scoring the new candidates; rank everything.

    Raises:
        SelectionError: no client or no candidate, a malformed client reply, or
            every client dropped.
    """
    if not clients:
        raise SelectionError("no client has held-out chats to score instructions on")
    if not initial:
        raise SelectionError("no candidate instruction to score")
    say = log or (lambda _: None)
    pool = list(initial)
    tables: dict[str, dict[str, Score]] = {c: {} for c in clients}
    bytes_up = dict.fromkeys(tables, 0)
    bytes_down = dict.fromkeys(tables, 0)
    rounds: list[dict[str, Any]] = []

    def collect(request: dict[str, str], round_num: int) -> None:
        started = time.perf_counter()
        dropped = _collect(engine, round_num, request, tables, bytes_up, bytes_down)
        if not tables:
            raise SelectionError(f"every client dropped by scoring round {round_num}")
        best = order(_without_baseline(tables), cfg.aggregate, [c.id for c in pool])[0]
        rounds.append(
            {
                "round": round_num,
                "new": [k for k in request if k != BASELINE_ID],
                "best": best,
                "seconds": time.perf_counter() - started,
                **({"dropped": dropped} if dropped else {}),
            }
        )
        say(
            f"round {round_num}: scored {len(request)} instruction(s) on {len(clients)} "
            f"clients in {rounds[-1]['seconds']:.1f} s; best so far {best}"
        )

    collect({BASELINE_ID: "", **{c.id: c.text for c in pool}}, 0)
    for round_num in range(1, cfg.mutation_rounds + 1):
        ids = order(_without_baseline(tables), cfg.aggregate, [c.id for c in pool])
        by_id = {c.id: c for c in pool}
        parents = [by_id[i] for i in ids[: cfg.keep]]
        made = propose(
            [p.text for p in parents],
            cfg.mutations_per_round,
            seed,
            round_num,
            [c.text for c in pool],
        )
        if not made:
            say(f"round {round_num}: no new instruction could be made; stopping")
            break
        id_of = {p.text: p.id for p in parents}
        new = [
            Candidate(
                candidate_id(len(pool) + i),
                m.text,
                f"{m.operation} of {id_of[m.parent]}",
                round_num,
            )
            for i, m in enumerate(made)
        ]
        pool += new
        collect({c.id: c.text for c in new}, round_num)

    scored = _without_baseline(tables)
    ranking = _ranking(pool, scored, cfg.aggregate)
    baseline = {client: table[BASELINE_ID] for client, table in tables.items()}
    return Selection(cfg.aggregate, cfg.keep, ranking, baseline, bytes_up, bytes_down, rounds)


def _collect(
    engine: Engine,
    round_num: int,
    request: dict[str, str],
    tables: dict[str, dict[str, Score]],
    bytes_up: dict[str, int],
    bytes_down: dict[str, int],
) -> dict[str, str]:
    """Send ``request`` to every client still in ``tables`` (one ``score`` phase);
    validate and file each reply. A client that drops leaves ``tables``.

    Returns:
        client id -> why it dropped, for those that did.
    """
    message = Message(config={ROUND: round_num, CANDIDATES: encode_texts(request)})
    size = message_bytes(message)
    dropped: dict[str, str] = {}
    for client_id, reply in engine.exchange(SCORE, dict.fromkeys(tables, message)):
        bytes_down[client_id] += size
        if isinstance(reply, Dropped):
            dropped[client_id] = reply.reason
            del tables[client_id]
            continue
        bytes_up[client_id] += try_message_bytes(reply) or 0
        payload = reply.config.get(SCORES)
        try:
            if not isinstance(payload, bytes):
                raise ValueError(f"no {SCORES!r} bytes in the reply")
            scores = decode_scores(payload)
        except ValueError as err:
            raise SelectionError(f"client {client_id} sent a bad score table: {err}") from None
        if set(scores) != set(request):
            raise SelectionError(
                f"client {client_id} scored {sorted(scores)}, not the requested {sorted(request)}"
            )
        for key, (loss_sum, tokens) in scores.items():
            tables[client_id][key] = Score(loss_sum, tokens)
    return dropped


def _without_baseline(tables: dict[str, dict[str, Score]]) -> dict[str, dict[str, Score]]:
    return {c: {k: s for k, s in t.items() if k != BASELINE_ID} for c, t in tables.items()}


def _ranking(
    pool: Sequence[Candidate], tables: dict[str, dict[str, Score]], how: str
) -> list[Ranked]:
    ids = order(tables, how, [c.id for c in pool])
    by_id = {c.id: c for c in pool}
    ranks = {client: client_ranks(table) for client, table in tables.items()}
    means = mean_ranks(tables)
    out = []
    for position, cid in enumerate(ids, start=1):
        loss = pooled_loss(tables, cid)
        out.append(
            Ranked(
                candidate=by_id[cid],
                position=position,
                score=means[cid] if how == "rank" else loss,
                loss=loss,
                mean_rank=means[cid],
                per_client={client: t[cid].loss for client, t in tables.items()},
                client_rank={client: r[cid] for client, r in ranks.items()},
            )
        )
    return out
