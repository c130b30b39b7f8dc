"""Homomorphic aggregation as a round protocol: encrypted train, then decrypt.

``he/train`` carries the training broadcast; each client trains, encrypts its update
under CKKS and replies with the ciphertexts, which the server adds as they arrive
(:class:`fedllm.secure.he.ckks.EncryptedSum`: one encrypted sum in memory, never a
plaintext). ``he/decrypt`` sends the encrypted sum to one client that took part (the
first in id order), which decrypts it; the mean then enters the pipeline as one update,
so the server halves, plug-ins and server optimizer run as after a plain round. The
record's ``he`` entry gives the ciphertext bytes per client and the server's seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedllm.message import ROUND, ConfigValue, Dropped, Message, Reply
from fedllm.protocol.driver import Phase
from fedllm.protocol.fedavg import TrainingSetup, TrainPhase
from fedllm.protocol.hidden import count_hidden, fold_revealed, refuse_hidden
from fedllm.protocol.tally import Tally
from fedllm.secure.errors import SecAggViolation
from fedllm.secure.he import ckks as he
from fedllm.secure.he.parts import (
    CHUNKS,
    DECRYPT_PHASE,
    LENGTH,
    PLAIN_SUM,
    REFUSED,
    TRAIN_PHASE,
    WEIGHTED,
    pack_chunks,
    unpack_chunks,
)
from fedllm.server.plugin import RoundContext
from fedllm.types import ClientId

HE = "he"
"""The round record's entry of the protocol's costs, and the aggregate's client id."""


class HEExchange:
    """The :data:`~fedllm.protocol.fedavg.Exchange` of CKKS aggregation.

    Args:
        public_context: the server's TenSEAL context (no secret key).
    """

    def __init__(self, public_context: bytes) -> None:
        self.public_context = public_context

    def __call__(self, ctx: RoundContext, setup: TrainingSetup, tally: Tally) -> list[Phase]:
        state = _HERound(ctx, setup, tally, he.EncryptedSum(self.public_context))
        return [_EncryptedTrain(state), _Decrypt(state)]


class _HERound:
    def __init__(
        self, ctx: RoundContext, setup: TrainingSetup, tally: Tally, total: he.EncryptedSum
    ) -> None:
        self.ctx, self.setup, self.tally, self.total = ctx, setup, tally, total
        self.size = sum(t.numel() for t in ctx.params.values())
        self.costs: dict[str, Any] = {}
        ctx.record.extra[HE] = self.costs


class _EncryptedTrain:
    name = TRAIN_PHASE

    def __init__(self, state: _HERound) -> None:
        self.state = state
        self.train = TrainPhase(state.ctx, state.setup, state.tally)

    def messages(self) -> Mapping[ClientId, Message]:
        messages = self.train.messages()
        weighted = self.state.setup.weighting == "examples"
        return {
            c: Message(arrays=m.arrays, config={**m.config, WEIGHTED: weighted})
            for c, m in messages.items()
        }

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        state = self.state
        if isinstance(reply, Dropped):
            return
        refusal = reply.config.get(REFUSED)
        if refusal is not None:
            refuse_hidden(state.tally, client_id, reply, f"refused: {refusal!s}")
            return
        data = reply.config.get(CHUNKS)
        try:
            if not isinstance(data, bytes):
                raise SecAggViolation(f"the reply lacks {CHUNKS!r}")
            state.total.add(unpack_chunks(data))
        except (SecAggViolation, he.HEError) as error:
            refuse_hidden(state.tally, client_id, reply, f"ciphertext refused: {error}")
            return
        count = reply.config.get("num_examples")
        weighted = state.setup.weighting == "examples"
        weight = float(count) if weighted and isinstance(count, int) else 1.0
        count_hidden(state.ctx, state.setup, state.tally, client_id, reply, weight)

    def finish(self) -> None:
        state = self.state
        state.tally.close()
        sizes = state.total.bytes_per_client
        state.costs.update(
            clients=len(sizes),
            ciphertext_bytes_per_client=max(sizes, default=0),
            plaintext_bytes_per_client=4 * state.size,
            server_add_s=state.total.cost.add_seconds,
        )


class _Decrypt:
    name = DECRYPT_PHASE

    def __init__(self, state: _HERound) -> None:
        self.state = state
        self.decryptor: ClientId | None = None

    def messages(self) -> Mapping[ClientId, Message]:
        state = self.state
        accepted = sorted(state.ctx.record.accepted)
        if not accepted or state.ctx.accepted_weight <= 0:
            return {}
        self.decryptor = accepted[0]
        config: dict[str, ConfigValue] = {
            ROUND: state.ctx.round,
            CHUNKS: pack_chunks(state.total.result()),
            LENGTH: state.size,
        }
        return {self.decryptor: Message(config=config)}

    def receive(self, client_id: ClientId, reply: Reply) -> None:
        state = self.state
        total = None if isinstance(reply, Dropped) else reply.arrays.get(PLAIN_SUM)
        if not isinstance(total, torch.Tensor) or total.shape != (state.size,):
            why = reply.reason if isinstance(reply, Dropped) else str(reply.config.get(REFUSED))
            state.ctx.abort = f"the decrypting client {client_id} sent no sum ({why})"
            return
        state.costs["decrypted_by"] = client_id
        count = len(state.ctx.record.accepted)
        fold_revealed(state.ctx, state.setup, state.tally, HE, total.numpy(), count)

    def finish(self) -> None:
        return None
