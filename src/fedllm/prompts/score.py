"""The client side: score candidate instructions on private held-out chats.

A :class:`PromptClient` holds its chats and never hands them out: it receives
candidate instructions (encoded text in the message's config) and returns a
score table (encoded: per candidate id, the summed answer loss and the number
of answer tokens), in the ``score`` phase of the selection protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fedllm.data.format import Example
from fedllm.data.instruct import InstructedEncoder
from fedllm.eval.evaluate import HeldOut, evaluate
from fedllm.message import Message
from fedllm.model.state import set_trainable_state
from fedllm.types import ClientId, Params
from fedllm.wire import decode_texts, encode_scores

SCORE = "score"
"""The phase in which clients score candidate instructions."""

CANDIDATES = "candidates"
"""Config key of the encoded candidate table sent to clients."""

SCORES = "scores"
"""Config key of the encoded score table a client replies with."""

BASELINE_ID = "baseline"
"""Request id of the empty instruction: the chats as they are (a reference, never selected)."""

ScoreFn = Callable[[ClientId, Sequence[Example]], HeldOut]
"""(client id, tokenized examples) -> summed answer loss (nats) and answer tokens."""


class Score(HeldOut):
    """One client's score of one candidate: the summed answer loss (nats) and the answer
    tokens scored. Unlike a plain :class:`HeldOut`, a candidate that leaves no answer
    token to score has an infinite mean loss, so it ranks last."""

    @property
    def loss(self) -> float:
        """Mean answer loss (nats/token); infinite when no token was scored."""
        return self.loss_sum / self.tokens if self.tokens else math.inf


def model_scorer(
    model: torch.nn.Module,
    pad_id: int,
    batch_size: int,
    state_of: Callable[[ClientId], Params] | None = None,
    bf16: bool = False,
) -> ScoreFn:
    """A :data:`ScoreFn` evaluating ``model``.

    Args:
        model: the model every client scores with (one model in the simulator).
        pad_id: the tokenizer's padding id.
        batch_size: examples per forward pass.
        state_of: the trainable state each client's model has (a trained run's);
            None: the model as it is.
        bf16: bfloat16 autocast.
    """
    loaded: list[ClientId] = []

    def score(client: ClientId, examples: Sequence[Example]) -> HeldOut:
        if state_of is not None and loaded != [client]:
            set_trainable_state(model, state_of(client))
            loaded[:] = [client]
        return evaluate(model, examples, batch_size, pad_id, bf16=bf16)

    return score


class PromptClient:
    """One client of a selection: private held-out chats in, scores out.

    Args:
        client_id: the client's id.
        encoder: tokenizes the client's held-out chats under an instruction.
        score_fn: scores tokenized examples.
    """

    def __init__(self, client_id: ClientId, encoder: InstructedEncoder, score_fn: ScoreFn) -> None:
        self.client_id = client_id
        self._encoder = encoder
        self._score_fn = score_fn

    @property
    def num_examples(self) -> int:
        """Held-out chats this client scores on."""
        return len(self._encoder)

    def handle(self, message: Message) -> Message:
        """Score each requested instruction; reply with only the encoded score table.

        Args:
            message: ``config[CANDIDATES]`` holds the encoded ``{candidate id:
                instruction}``; the empty instruction means none (:data:`BASELINE_ID`).

        Returns:
            ``config[SCORES]``: encoded ``{candidate id: (loss sum in nats, answer tokens)}``.
        """
        request = message.config.get(CANDIDATES)
        if not isinstance(request, bytes):
            raise ValueError(f"a score request carries {CANDIDATES!r} bytes, got {request!r}")
        table = {}
        for key, text in decode_texts(request).items():
            held = self._score_fn(self.client_id, self._encoder.encode(text or None))
            table[key] = (held.loss_sum, held.tokens)
        return Message(config={SCORES: encode_scores(table)})


def prompt_handler(clients: Sequence[PromptClient]) -> Callable[[ClientId, str, Message], Message]:
    """The client side of a selection for an engine: each client answers ``score``."""
    by_id = {c.client_id: c for c in clients}

    def handle(client_id: ClientId, phase: str, message: Message) -> Message:
        if phase != SCORE:
            raise ValueError(f"a prompt client answers phase {SCORE!r}, not {phase!r}")
        return by_id[client_id].handle(message)

    return handle
