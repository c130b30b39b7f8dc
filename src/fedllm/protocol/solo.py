"""Clients training alone (local mode): the same driver, tally and validation as a
federated round, but each client starts from, and keeps, its own model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from fedllm.client.side import TRAIN
from fedllm.message import ROUND, Dropped, Message, Reply
from fedllm.protocol.driver import run_phases
from fedllm.protocol.engine import Engine, ReplyDone
from fedllm.protocol.screen import read_update
from fedllm.protocol.tally import Tally
from fedllm.server.validate import find_problem
from fedllm.types import ClientId, Params, RoundRecord

StateOf = Callable[[ClientId], Params]
"""A client's own model state."""


class OwnStates(Mapping[ClientId, Message]):
    """Each client's message holds its own state, loaded only when it is sent (memory
    holds the states of clients that have not answered yet, one at a time in the
    simulator, not all of them); :meth:`take` hands a sent state back for validation."""

    def __init__(self, cohort: Sequence[ClientId], state_of: StateOf, round_num: int) -> None:
        self.cohort = list(cohort)
        self.state_of = state_of
        self.round_num = round_num
        self._sent: dict[ClientId, Params] = {}

    def __getitem__(self, client_id: ClientId) -> Message:
        if client_id not in self.cohort:
            raise KeyError(client_id)
        state = self._sent[client_id] = self.state_of(client_id)
        return Message(arrays=state, config={ROUND: self.round_num})

    def take(self, client_id: ClientId) -> Params:
        """The state ``client_id`` was sent (loaded again if it never was)."""
        return self._sent.pop(client_id, None) or self.state_of(client_id)

    def __iter__(self) -> Iterator[ClientId]:
        return iter(self.cohort)

    def __len__(self) -> int:
        return len(self.cohort)


class SoloPhase:
    """Every sampled client trains from its own model; an accepted update replaces it."""

    name = TRAIN

    def __init__(
        self,
        record: RoundRecord,
        state_of: StateOf,
        keep: Callable[[ClientId, Params], None],
        tally: Tally,
    ) -> None:
        self.record = record
        self.state_of = state_of
        self.keep = keep
        self.tally = tally
        self.sent = OwnStates(record.sampled, state_of, record.round)

    def messages(self) -> Mapping[ClientId, Message]:
        return self.sent

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        start = self.sent.take(client_id)
        if isinstance(reply, Dropped):
            return
        update = read_update(client_id, reply)
        self.tally.trained(update)
        problem = find_problem(update, start)
        if problem is not None:
            self.tally.reject(update, problem)
            return
        with torch.no_grad():
            self.keep(client_id, {k: start[k] + update.delta[k] for k in start})
        self.tally.accept(update)

    def finish(self) -> None:
        self.tally.close()


def run_solo_round(
    round_num: int,
    cohort: Sequence[ClientId],
    engine: Engine,
    state_of: StateOf,
    keep: Callable[[ClientId, Params], None],
    on_reply: ReplyDone | None = None,
) -> RoundRecord:
    """One round of clients training alone; nothing leaves a client (no bytes)."""
    record = RoundRecord(round=round_num, sampled=list(cohort))
    tally = Tally(record, counts_bytes=False)
    run_phases([SoloPhase(record, state_of, keep, tally)], engine, tally, on_reply)
    return record
