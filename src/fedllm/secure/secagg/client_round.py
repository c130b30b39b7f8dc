"""One client's side of a SecAgg+ round, as a state machine over bytes and int vectors.

Phases, in order (each method once; anything else is a :class:`SecAggViolation`):

1. :meth:`SecAggClient.advertise`: two fresh X25519 key pairs, one to seal share
   messages (``c``), one to agree pairwise masks (``s``); the public halves go out,
   signed with the node's authentication key where it has one
   (:attr:`SecAggClient.signature`).
2. :meth:`SecAggClient.share_keys`: given its live neighbours' public keys (each
   signature verified against the roster first, where there is one), a fresh
   self-mask seed ``b``; ``b`` and the mask private key are Shamir-shared t-of-k among
   those neighbours, each neighbour's two shares sealed to it.
3. :meth:`SecAggClient.mask`: given the share messages addressed to it (their senders
   are the neighbours still in the round), the quantised input plus the self mask
   plus the pairwise masks with those senders, mod 2^bits.
4. :meth:`SecAggClient.unmask`: for each neighbour the server says survived, the share
   of its self-mask seed; for each it says dropped, the share of its mask key; never
   both for one neighbour (so the server cannot learn both of a client's secrets), once
   only, and only when at least t of the neighbours whose shares it holds survived
   (fewer could not rebuild this client's own self-mask seed: the round cannot finish,
   and a server that says so is lying or about to abort).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from fedllm.secure.errors import SecAggAbort, SecAggViolation
from fedllm.secure.keys import (
    KeyPair,
    Roster,
    agree,
    context_label,
    generate_key_pair,
    open_sealed,
    seal,
    sign_advertised,
    verify_advertised,
)
from fedllm.secure.messages import (
    pack_plaintext,
    pack_revealed,
    unpack_keys,
    unpack_plaintext,
    unpack_signed_keys,
)
from fedllm.secure.randomness import Randomness
from fedllm.secure.secagg import shamir
from fedllm.secure.secagg.masking import ENCRYPT_PURPOSE, add_mask, pair_sign, pairwise_seed
from fedllm.secure.secagg.params import RoundParams
from fedllm.secure.secagg.prg import SEED_BYTES

_ADVERTISE, _SHARE, _MASK, _UNMASK, _DONE = range(5)


def share_index(cohort: Sequence[str], client_id: str) -> int:
    """A client's Shamir x-coordinate: its position in the sorted cohort, from 1.

    Raises:
        SecAggViolation: the client is not in the cohort.
    """
    ordered = sorted(cohort)
    if client_id not in ordered:
        raise SecAggViolation(f"client {client_id!r} is not in the round's cohort")
    return ordered.index(client_id) + 1


@dataclass(frozen=True)
class _Held:
    """The shares one neighbour sealed to this client."""

    self_mask: bytes
    mask_key: bytes


class SecAggClient:
    """A client's keys, secrets and received shares for one round.

    Args:
        client_id: this client.
        params: the round's ring, threshold and id.
        cohort: every client the round started with (fixes the share x-coordinates).
        rng: key material, seeds, Shamir coefficients and nonces (a CSPRNG in
            deployment, seeded in simulation).
        signer: the node's authentication key, which signs the advertised keys; None:
            they go unsigned.
        roster: every client's node public key; given, each neighbour's keys must
            carry its node's signature for this round, or the client refuses the
            round; None: neighbours' keys are taken as the server forwards them
            (honest-but-curious server).
    """

    def __init__(
        self,
        client_id: str,
        params: RoundParams,
        cohort: Sequence[str],
        rng: Randomness,
        signer: ec.EllipticCurvePrivateKey | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.client_id = client_id
        self.params = params
        self.cohort = list(cohort)
        self.index = share_index(self.cohort, client_id)
        self.rng = rng
        self._phase = _ADVERTISE
        self._c: KeyPair | None = None
        self._s: KeyPair | None = None
        self._self_seed = b""
        self._peers: dict[str, tuple[bytes, bytes]] = {}
        self._held: dict[str, _Held] = {}
        self.signer, self.roster = signer, roster
        self.signature = b""
        """The signature of the advertised keys (empty without a signer)."""

    def advertise(self) -> tuple[bytes, bytes]:
        """Phase 1: fresh key pairs; their (encryption, mask) public keys (signed into
        :attr:`signature` where there is a signer)."""
        self._enter(_ADVERTISE)
        self._c = generate_key_pair(self.rng)
        self._s = generate_key_pair(self.rng)
        if self.signer is not None:
            self.signature = sign_advertised(
                self.signer, self.params.round_id, self.client_id, self._c.public, self._s.public
            )
        return self._c.public, self._s.public

    def share_keys(self, neighbour_keys: Mapping[str, bytes]) -> dict[str, bytes]:
        """Phase 2: seal to each live neighbour its shares of the self-mask seed and of
        the mask private key.

        Args:
            neighbour_keys: live neighbour id -> its ``pk_c || pk_s`` (``|| signature``
                with a roster).

        Returns:
            neighbour id -> sealed share message.

        Raises:
            SecAggAbort: fewer than t live neighbours (its secrets could not be
                recovered).
            SecAggViolation: itself or an id outside the cohort among them, or a
                malformed key.
            AuthenticationError: with a roster, a neighbour's keys without its node's
                valid signature for this round (the server substituted them).
        """
        self._enter(_SHARE)
        assert self._c is not None and self._s is not None
        t = self.params.threshold
        if self.client_id in neighbour_keys:
            raise SecAggViolation(f"client {self.client_id!r} was sent its own keys")
        if len(neighbour_keys) < t:
            raise SecAggAbort(
                f"client {self.client_id!r} has {len(neighbour_keys)} live neighbour(s), "
                f"fewer than the threshold {t}"
            )
        self._peers = {v: self._verified(v, keys) for v, keys in neighbour_keys.items()}
        indices = {v: share_index(self.cohort, v) for v in self._peers}
        self._self_seed = self.rng.random_bytes(SEED_BYTES)
        b_shares = shamir.split(self._self_seed, t, list(indices.values()), self.rng)
        s_shares = shamir.split(self._s.private_bytes, t, list(indices.values()), self.rng)
        sealed: dict[str, bytes] = {}
        for v, (public_c, _) in self._peers.items():
            i = indices[v]
            plaintext = pack_plaintext(i, b_shares[i], s_shares[i])
            sealed[v] = seal(
                self._pair_key(v, public_c),
                plaintext,
                sender=self.client_id,
                recipient=v,
                round_id=self.params.round_id,
                rng=self.rng,
            )
        return sealed

    def receive_shares(self, sealed: Mapping[str, bytes]) -> None:
        """Open the share messages the live neighbours sealed to this client (start of
        phase 3; their senders are the neighbours it masks with).

        Raises:
            SecAggViolation: a sender it holds no keys of, a message that fails to open
                (tampered, redirected or replayed), or a share for another index.
        """
        self._enter(_MASK, advance=False)
        for u, message in sealed.items():
            if u not in self._peers:
                raise SecAggViolation(f"a share message from {u!r}, not a live neighbour")
            plaintext = open_sealed(
                self._pair_key(u, self._peers[u][0]),
                message,
                sender=u,
                recipient=self.client_id,
                round_id=self.params.round_id,
            )
            index, b_share, s_share = unpack_plaintext(plaintext)
            if index != self.index:
                raise SecAggViolation(f"{u!r} sent the share of index {index}, not {self.index}")
            self._held[u] = _Held(b_share, s_share)

    def mask(self, quantised: NDArray[np.int64]) -> NDArray[np.int64]:
        """Phase 3: the masked input ``y = x + PRG(b) + sum_v +-PRG(k_uv) mod 2^bits``,
        v over the neighbours whose share messages arrived.

        Args:
            quantised: the input in the ring (:func:`fedllm.secure.secagg.ring.quantise`), 1-D.

        Raises:
            SecAggViolation: not a 1-D int64 vector in [0, 2^bits).
        """
        self._enter(_MASK)
        assert self._s is not None
        bits = self.params.spec.bits
        x = np.asarray(quantised)
        if x.ndim != 1 or x.dtype != np.int64:
            raise SecAggViolation(f"the input must be a 1-D int64 vector, not {x.dtype} {x.shape}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << bits):
            raise SecAggViolation(f"the input must lie in [0, 2^{bits})")
        y = x.copy()
        add_mask(y, self._self_seed, bits, 1)
        for v in sorted(self._held):
            seed = pairwise_seed(
                self._s.private, self._peers[v][1], self.params.round_id, self.client_id, v
            )
            add_mask(y, seed, bits, pair_sign(self.client_id, v))
        return y

    def unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> dict[str, bytes]:
        """Phase 4: reveal self-mask-seed shares of ``survivors`` and mask-key shares of
        ``dropped`` (only neighbours whose shares it holds; others are ignored).

        Returns:
            neighbour id -> ``index || share``.

        Raises:
            SecAggViolation: a client in both lists or twice in one, or this client in
                ``dropped``.
            SecAggAbort: fewer than t survivors among the neighbours whose shares it
                holds (itself not counted: it holds no share of its own secrets).
        """
        self._enter(_UNMASK)
        for name, ids in (("survivors", survivors), ("dropped", dropped)):
            if len(set(ids)) != len(ids):
                raise SecAggViolation(f"the {name} list names a client twice")
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggViolation(f"clients {sorted(both)} are both survivors and dropped")
        if self.client_id in dropped:
            raise SecAggViolation(f"client {self.client_id!r} is told it dropped")
        live = len(set(survivors) & set(self._held))
        if live < self.params.threshold:
            raise SecAggAbort(
                f"client {self.client_id!r} sees {live} survivor(s) among its neighbours, "
                f"fewer than the threshold {self.params.threshold}: its own self-mask seed "
                "could not be rebuilt; it reveals nothing"
            )
        revealed: dict[str, bytes] = {}
        for u in survivors:
            if u in self._held:
                revealed[u] = pack_revealed(self.index, self._held[u].self_mask)
        for u in dropped:
            if u in self._held:
                revealed[u] = pack_revealed(self.index, self._held[u].mask_key)
        return revealed

    def _verified(self, peer: str, data: bytes) -> tuple[bytes, bytes]:
        """A neighbour's keys, checked against its node's signature where there is a
        roster (before any secret is derived from them)."""
        if self.roster is None:
            return unpack_keys(data)
        public_c, public_s, signature = unpack_signed_keys(data)
        verify_advertised(self.roster, signature, self.params.round_id, peer, public_c, public_s)
        return public_c, public_s

    def _pair_key(self, peer: str, peer_public_c: bytes) -> bytes:
        assert self._c is not None
        label = context_label(ENCRYPT_PURPOSE, self.params.round_id, self.client_id, peer)
        return agree(self._c.private, peer_public_c, label)

    def _enter(self, phase: int, advance: bool = True) -> None:
        if self._phase != phase:
            names = ["advertise", "share keys", "masked input", "unmask", "done"]
            raise SecAggViolation(
                f"client {self.client_id!r} was asked for {names[phase]} while at "
                f"{names[self._phase]}"
            )
        if advance:
            self._phase += 1
