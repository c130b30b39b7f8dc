"""A client's four SecAgg+ phases around its training (the client half of
:mod:`fedllm.secure.secagg.server`).

The masked-input phase trains exactly as a plain round does (the client side's
plug-ins and the pipeline's client halves: the clip among them), then flattens the
update in key order, adds its share of distributed DP noise if the pipeline asks for
it, quantises it into the ring and masks it. Key material, noise and rounding come
from a seeded stream in the simulator (reproducible) and from the operating system's
CSPRNG on a distributed engine (``deterministic=False``).

A client that cannot follow the protocol (too few live neighbours, a message that
fails to open, a non-finite update) answers with a refusal naming why; the server
counts it as dropped at that phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec

from fedllm.client.flat import flatten
from fedllm.client.side import NUM_EXAMPLES, ClientSide
from fedllm.message import Message
from fedllm.secure.errors import SecAggError, SecAggViolation
from fedllm.secure.keys import Roster
from fedllm.secure.messages import decode_ids, pack_keys, pack_map, unpack_map
from fedllm.secure.randomness import Randomness, SeededRandomness, SystemRandomness
from fedllm.secure.secagg import parts
from fedllm.secure.secagg.client_round import SecAggClient
from fedllm.secure.secagg.masking import wire_dtype
from fedllm.secure.secagg.params import RoundParams
from fedllm.secure.secagg.ring import quantise
from fedllm.types import ClientId

LOGGER = logging.getLogger(__name__)


class SecAggClientPhases:
    """The handlers of the four phases for the clients a client side trains.

    Args:
        side: trains a client in the masked-input phase.
        seed: the run seed (the simulator's key material derives from it).
        deterministic: seeded key material (simulation) or the OS CSPRNG (deployment).
        noise_std: the distributed DP noise each client adds (None: none).
        signer: this node's authentication key: its advertised keys go out signed.
        roster: every client's node public key: neighbours' keys are verified against
            it before any secret is derived (None: taken as forwarded).
    """

    def __init__(
        self,
        side: ClientSide,
        seed: int,
        deterministic: bool,
        noise_std: parts.NoiseStd | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.side = side
        self.signer, self.roster = signer, roster
        self.seed = seed
        self.deterministic = deterministic
        self.noise_std = noise_std
        self.rounds: dict[ClientId, SecAggClient] = {}
        self.warned: set[ClientId] = set()  # clients that said their update was clipped

    def handlers(self) -> dict[str, Callable[[ClientId, str, Message], Message]]:
        """Phase name -> handler, for :func:`fedllm.protocol.engine.by_phase`."""
        steps = {
            parts.ADVERTISE: self._advertise,
            parts.SHARE: self._share,
            parts.MASKED: self._masked,
            parts.UNMASK: self._unmask,
        }
        return {phase: self._refusing(step) for phase, step in steps.items()}

    def _refusing(
        self, step: Callable[[ClientId, Message], Message]
    ) -> Callable[[ClientId, str, Message], Message]:
        def handle(client_id: ClientId, phase: str, message: Message) -> Message:
            try:
                return step(client_id, message)
            except SecAggError as error:
                self.rounds.pop(client_id, None)
                return Message(config={parts.REFUSED: str(error)})

        return handle

    def _advertise(self, client_id: ClientId, message: Message) -> Message:
        try:
            params = RoundParams.from_config(message.config)
        except ValueError as error:
            raise SecAggViolation(str(error)) from error
        cohort = decode_ids(_bytes(message, parts.COHORT))
        rng = self._randomness("keys", params.round_id, client_id)
        client = SecAggClient(client_id, params, cohort, rng, self.signer, self.roster)
        self.rounds[client_id] = client
        public = pack_keys(*client.advertise())
        signed = {parts.SIGNATURE: client.signature} if client.signature else {}
        return Message(config={parts.PUBLIC: public, **signed})

    def _share(self, client_id: ClientId, message: Message) -> Message:
        sealed = self._client(client_id).share_keys(unpack_map(_bytes(message, parts.KEYS)))
        return Message(config={parts.SHARES: pack_map(sealed)})

    def _masked(self, client_id: ClientId, message: Message) -> Message:
        client = self._client(client_id)
        client.receive_shares(unpack_map(_bytes(message, parts.SHARES)))
        update = self.side.run(client_id, message)
        vector = flatten(update.delta)
        if not np.all(np.isfinite(vector)):
            raise SecAggViolation("the update is not finite (NaN or infinity); not sent")
        spec = client.params.spec
        rng = self._randomness("noise", client.params.round_id, client_id)
        draws = np.random.default_rng(int.from_bytes(rng.random_bytes(16), "big"))
        std = self.noise_std(message.config) if self.noise_std is not None else 0.0
        if std > 0:
            vector = vector + draws.normal(0.0, std, vector.shape)
        clipped = float(np.mean(np.abs(vector) > spec.clip_range)) if vector.size else 0.0
        if clipped > 0 and client_id not in self.warned:  # said here once, never sent
            self.warned.add(client_id)
            LOGGER.warning(
                "client %s: %.3g%% of the update's entries exceed the ring's range %.3g and "
                "are clipped (raise secagg.clip_range; said once per client)",
                client_id,
                100 * clipped,
                spec.clip_range,
            )
        masked = wire_dtype(client.mask(quantise(vector, spec, draws)), spec.bits)
        return Message(
            arrays={parts.MASKED_INPUT: torch.from_numpy(masked)},
            config={NUM_EXAMPLES: update.num_examples},
            metrics=dict(update.metrics),  # the public ones only (ClientSide.run)
        )

    def _unmask(self, client_id: ClientId, message: Message) -> Message:
        client = self._client(client_id)
        survivors = decode_ids(_bytes(message, parts.SURVIVORS))
        dropped = decode_ids(_bytes(message, parts.DROPPED))
        revealed = client.unmask(survivors, dropped)
        del self.rounds[client_id]
        return Message(config={parts.REVEALED: pack_map(revealed)})

    def _client(self, client_id: ClientId) -> SecAggClient:
        if client_id not in self.rounds:
            raise SecAggViolation(f"client {client_id!r} has no secure-aggregation round open")
        return self.rounds[client_id]

    def _randomness(self, purpose: str, round_id: int, client_id: ClientId) -> Randomness:
        if self.deterministic:
            return SeededRandomness(self.seed, "secagg", purpose, round_id, client_id)
        return SystemRandomness()


def _bytes(message: Message, key: str) -> bytes:
    value = message.config.get(key)
    if not isinstance(value, bytes):
        raise SecAggViolation(f"the message lacks {key!r} (bytes)")
    return value
