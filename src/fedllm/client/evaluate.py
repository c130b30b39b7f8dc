"""A client scores a model on its own held-out data and replies with sums, never text.

Evaluation is a phase of its own (:data:`EVALUATE`) that every engine carries like
training: the server sends the state to score, the client answers with token-loss
sums (:data:`EVAL_LOSS`, :data:`EVAL_TOKENS`), so on a distributed engine the held-out
text never leaves the client. Which model the client scores is the ``scope`` the
message names: the state as sent, or the client's own model composed from it (its
personal parts added, which only the client holds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedllm.data import ClientData, Example
from fedllm.eval.evaluate import HeldOut, evaluate
from fedllm.message import ConfigValue, Message
from fedllm.model.state import set_trainable_state
from fedllm.types import ClientId, Params

EVALUATE = "evaluate"
"""The phase in which a client scores the sent state on its held-out data."""

SCOPE = "eval/scope"
"""Config key naming which model the client scores (see :data:`SCOPES`)."""

AS_SENT, CLIENT, GLOBAL = "sent", "client", "global"
SCOPES = (AS_SENT, CLIENT, GLOBAL)
"""``sent``: the arrays as they are; ``client``: the client's own model built from
them; ``global``: the shared model without any client's own parts."""

WITH_TEST = "eval/with_test"
"""Config key: also score the federation's test split (and public held-out) held here."""

EVAL_LOSS, EVAL_TOKENS = "eval/loss_sum", "eval/tokens"
TEST_LOSS, TEST_TOKENS = "test/loss_sum", "test/tokens"
PUBLIC_LOSS, PUBLIC_TOKENS = "public/loss_sum", "public/tokens"

StateOf = Callable[[ClientId, Params, str], Params]
"""``(client, sent arrays, scope) -> the trainable state the client scores``."""


def as_sent(client_id: ClientId, sent: Params, scope: str) -> Params:
    """The sent arrays themselves (no client holds parts of its own)."""
    if scope not in SCOPES:
        raise ValueError(f"evaluation scope {scope!r}: expected one of {SCOPES}")
    return sent


@dataclass
class ClientEvaluator:
    """Answers :data:`EVALUATE` messages for the clients whose data is here.

    Attributes:
        clients: each client's data, by id (its ``eval`` split is scored).
        model: the model every client is scored on in turn.
        batch_size: evaluation batch size (examples).
        pad_id: the tokenizer's padding id.
        bf16: score under bf16 autocast (as training does).
        test: the federation's test split as held here (empty: none).
        public: the public corpus's held-out part as held here (empty: none).
        state_of: how a client builds the model it scores from the sent arrays.
    """

    clients: Mapping[ClientId, ClientData]
    model: torch.nn.Module
    batch_size: int
    pad_id: int
    bf16: bool = False
    test: Sequence[Example] = ()
    public: Sequence[Example] = ()
    state_of: StateOf = field(default=as_sent)

    def handle(self, client_id: ClientId, phase: str, message: Message) -> Message:
        """Score ``client_id``'s eval split (and the test splits if asked); the sums."""
        if phase != EVALUATE:
            raise ValueError(f"the evaluating client answers phase {EVALUATE!r}, not {phase!r}")
        if client_id not in self.clients:
            raise KeyError(f"no data for client {client_id!r} here")
        scope = str(message.config.get(SCOPE, AS_SENT))
        set_trainable_state(self.model, self.state_of(client_id, message.arrays, scope))
        metrics = held_out_metrics(EVAL_LOSS, EVAL_TOKENS, self.score(self.clients[client_id].eval))
        if message.config.get(WITH_TEST):
            if self.test:
                metrics.update(held_out_metrics(TEST_LOSS, TEST_TOKENS, self.score(self.test)))
            if self.public:
                metrics.update(
                    held_out_metrics(PUBLIC_LOSS, PUBLIC_TOKENS, self.score(self.public))
                )
        return Message(metrics=metrics)

    def score(self, examples: Sequence[Example]) -> HeldOut:
        """The model's summed token loss on ``examples`` as it stands now."""
        return evaluate(self.model, examples, self.batch_size, self.pad_id, self.bf16)


def held_out_metrics(loss_key: str, tokens_key: str, held: HeldOut) -> dict[str, float]:
    """``held`` as two reply metrics (the token count as a float, exact below 2**53)."""
    return {loss_key: held.loss_sum, tokens_key: float(held.tokens)}


def read_held_out(metrics: Mapping[str, float], loss_key: str, tokens_key: str) -> HeldOut | None:
    """The sums a reply carries under the two keys, or None when it has none."""
    if tokens_key not in metrics or loss_key not in metrics:
        return None
    return HeldOut(float(metrics[loss_key]), int(metrics[tokens_key]))


def evaluate_message(round_num: int, state: Params, scope: str, with_test: bool) -> Message:
    """The message asking a client to score ``state`` in ``scope``."""
    config: dict[str, ConfigValue] = {"round": round_num, SCOPE: scope, WITH_TEST: with_test}
    return Message(arrays=state, config=config)
