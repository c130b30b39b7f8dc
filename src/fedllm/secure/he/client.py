"""A client's two CKKS phases around its training (the client half of
:mod:`fedllm.secure.he.server`): train and send the update encrypted; decrypt the sum when
the server asks this client to.

Every client holds the same secret context (the federation's shared key); the server
holds only the public one. With ``examples`` weighting a client encrypts its update
times its example count, and the server divides the decrypted sum by the total. The
decrypting client floods the sum with noise before replying
(:func:`fedllm.secure.he.ckks.decrypt_flooded`): the exact decryption would give the server,
who holds the ciphertext, the secret key.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from fedllm.client.flat import flatten
from fedllm.client.side import NUM_EXAMPLES, ClientSide
from fedllm.message import Message
from fedllm.secure.he import ckks as he
from fedllm.secure.he import parts
from fedllm.secure.randomness import Randomness
from fedllm.types import ClientId


class HEClientPhases:
    """The handlers of the two phases for the clients a client side trains.

    Args:
        side: trains a client in the train phase.
        secret_context: the clients' shared secret context, or a function reading it
            (a Flower node reads its file on first use).
        flooding: the noise added to a decryption before it is sent.
        rng: the noise's source; None: the operating system's CSPRNG (a seeded one only
            in tests).
    """

    def __init__(
        self,
        side: ClientSide,
        secret_context: bytes | Callable[[], bytes],
        flooding: he.Flooding,
        rng: Randomness | None = None,
    ) -> None:
        self.side = side
        self._secret = secret_context
        self.flooding = flooding
        self.rng = rng

    def handlers(self) -> dict[str, Callable[[ClientId, str, Message], Message]]:
        """Phase name -> handler, for :func:`fedllm.protocol.engine.by_phase`."""
        return {parts.TRAIN_PHASE: self._train, parts.DECRYPT_PHASE: self._decrypt}

    @property
    def secret(self) -> bytes:
        if callable(self._secret):
            self._secret = self._secret()
        return self._secret

    def _train(self, client_id: ClientId, phase: str, message: Message) -> Message:
        update = self.side.run(client_id, message)
        vector = flatten(update.delta)
        if not np.all(np.isfinite(vector)):
            return Message(config={parts.REFUSED: "the update is not finite (NaN or infinity)"})
        if message.config.get(parts.WEIGHTED) is True:
            vector = vector * update.num_examples
        start = time.perf_counter()
        chunks = he.encrypt_vector(vector, self.secret)
        seconds = time.perf_counter() - start
        metrics = {
            **update.metrics,
            parts.ENCRYPT_S: seconds,
            parts.CIPHERTEXT_BYTES: float(he.ciphertext_bytes(chunks)),
        }
        return Message(
            config={parts.CHUNKS: parts.pack_chunks(chunks), NUM_EXAMPLES: update.num_examples},
            metrics=metrics,
        )

    def _decrypt(self, client_id: ClientId, phase: str, message: Message) -> Message:
        data, length = message.config.get(parts.CHUNKS), message.config.get(parts.LENGTH)
        if not isinstance(data, bytes) or not isinstance(length, int):
            return Message(
                config={parts.REFUSED: f"the request lacks {parts.CHUNKS!r} or {parts.LENGTH!r}"}
            )
        try:
            total, std = he.decrypt_flooded(
                parts.unpack_chunks(data), length, self.secret, self.flooding, rng=self.rng
            )
        except he.HEError as error:
            return Message(config={parts.REFUSED: f"cannot decrypt: {error}"})
        return Message(
            arrays={parts.PLAIN_SUM: torch.from_numpy(total)}, metrics={parts.FLOODING_STD: std}
        )
