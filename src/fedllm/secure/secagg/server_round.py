"""The server's side of a SecAgg+ round: who is still in, what to route, and the sum.

The server tracks the client sets of Bell et al.: U1 advertised keys, U2 shared keys,
U3 sent a masked input, U4 answered the unmask request. It forwards keys and sealed
share messages it cannot read, adds the masked inputs mod 2^bits as they arrive (one
vector in memory), and at the end reconstructs from at least t shares each survivor's
self-mask seed and each dropped client's mask key to strip the masks that do not
cancel. It learns the sum of U3's inputs and nothing else (semi-honest model).

A round that cannot finish raises :class:`SecAggAbort` naming the clients and counts;
a client whose message breaks the protocol is dropped (:attr:`SecAggServer.dropped`).
Every byte a client sends is checked before it is used: a public key that is not a
valid point, a share that is not a field element, a share that does not lie on the
polynomial of the other shares of its secret, a mask key that does not match the
public key its owner advertised. A client caught this way is dropped (its revealed
shares discarded) while the round can still finish; where the culprit cannot be told
(exactly t shares), or the unmasked sum lies outside what the clients' inputs can sum
to, the round aborts with the reason. Nothing a client sends makes the server raise
anything but :class:`SecAggAbort` or drop that client.

These checks keep the round from crashing; they do not make the sum tamper-proof.
SecAgg+ protects the inputs' privacy, not the sum's integrity against a malicious
client: an input outside its levels that wraps back into range, or (with exactly t
shares of a secret) a share crafted to shift a self-mask seed, corrupts the sum
unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from fedllm.secure.errors import SecAggAbort, SecAggViolation
from fedllm.secure.keys import Roster, check_public_key, load_key_pair, verify_advertised
from fedllm.secure.messages import pack_keys, unpack_revealed
from fedllm.secure.secagg import shamir
from fedllm.secure.secagg.client_round import share_index
from fedllm.secure.secagg.graph import neighbours
from fedllm.secure.secagg.masking import add_mask, pair_sign, pairwise_seed
from fedllm.secure.secagg.params import RoundParams

SELF_SEED = "self-mask seed"
MASK_KEY = "mask key"
"""The two secrets of a client that its neighbours' shares rebuild."""


class _Culprit(Exception):
    """A shareholder whose revealed share is shown wrong by the others."""

    def __init__(self, holder: str, reason: str) -> None:
        super().__init__(reason)
        self.holder, self.reason = holder, reason


class SecAggServer:
    """One round's routing, bookkeeping and unmasking.

    Args:
        params: the round's ring, threshold and id.
        cohort: the clients asked to take part (at least 3, distinct).
        degree: k, the neighbours of each client (even, 2 <= k < len(cohort)).
        graph_seed: the neighbour graph's seed.
        size: the length of every input vector.
        min_survivors: the fewest masked inputs whose sum may be revealed (at least 2:
            the sum of one input is that input).
        roster: every client's node public key, where nodes sign their advertised
            keys: a client whose signature does not verify is dropped at once (else
            each of its neighbours would refuse the round). None: signatures, if any,
            are forwarded unchecked.

    Raises:
        ValueError: an invalid cohort, degree, threshold or minimum.
    """

    def __init__(
        self,
        params: RoundParams,
        cohort: Sequence[str],
        degree: int,
        graph_seed: int,
        size: int,
        min_survivors: int = 2,
        roster: Roster | None = None,
    ) -> None:
        if min_survivors < 2:
            raise ValueError(f"min_survivors = {min_survivors} must be >= 2")
        if params.threshold > degree:
            raise ValueError(f"threshold {params.threshold} exceeds the degree {degree}")
        self.params = params
        self.cohort = sorted(cohort)
        self.graph = neighbours(self.cohort, degree, graph_seed)
        self.size = size
        self.min_survivors = min_survivors
        self.dropped: dict[str, str] = {}
        self.roster = roster
        self.keys: dict[str, tuple[bytes, bytes]] = {}  # U1: (pk_c, pk_s)
        self.signatures: dict[str, bytes] = {}
        self.shared: set[str] = set()  # U2
        self._routes: dict[str, dict[str, bytes]] = {}  # recipient -> sender -> sealed
        self.masked: set[str] = set()  # U3
        self._total = np.zeros(size, dtype=np.int64)
        self.answered: set[str] = set()  # U4
        self._asked_survivors: dict[str, list[str]] = {}
        self._asked_dropped: dict[str, list[str]] = {}
        self._self_shares: dict[str, dict[int, bytes]] = {}
        self._key_shares: dict[str, dict[int, bytes]] = {}

    # -- phase 1: advertise keys ---------------------------------------------------------

    def receive_keys(
        self, client_id: str, public_c: bytes, public_s: bytes, signature: bytes = b""
    ) -> None:
        """A client's two public keys and its signature of them, if any (phase 1 reply)."""
        self._check_member(client_id)
        try:
            check_public_key(public_c)
            check_public_key(public_s)
            if self.roster is not None:
                verify_advertised(
                    self.roster, signature, self.params.round_id, client_id, public_c, public_s
                )
        except SecAggViolation as error:
            self.drop(client_id, f"advertised an invalid key: {error}")
            return
        self.keys[client_id] = (public_c, public_s)
        if signature:
            self.signatures[client_id] = signature

    def share_requests(self) -> dict[str, dict[str, bytes]]:
        """Phase 2 requests: each client in U1 -> its live neighbours' ``pk_c || pk_s``
        (``|| signature`` where they signed).

        Raises:
            SecAggAbort: a client in U1 has fewer than t live neighbours.
        """
        live = set(self.keys)
        self._need(live, "advertised keys")
        requests: dict[str, dict[str, bytes]] = {}
        for u in sorted(live):
            near = [v for v in self.graph[u] if v in live]
            self._enough(u, len(near), "neighbours that advertised keys")
            requests[u] = {v: pack_keys(*self.keys[v], self.signatures.get(v, b"")) for v in near}
        return requests

    # -- phase 2: share keys -------------------------------------------------------------

    def receive_shares(self, client_id: str, sealed: Mapping[str, bytes]) -> None:
        """A client's sealed share messages, by recipient (phase 2 reply)."""
        self._check_member(client_id)
        expected = {v for v in self.graph[client_id] if v in self.keys}
        if client_id not in self.keys or set(sealed) != expected:
            self.drop(client_id, "sent share messages for other clients than its neighbours")
            return
        self.shared.add(client_id)
        for v, message in sealed.items():
            self._routes.setdefault(v, {})[client_id] = message

    def masked_requests(self) -> dict[str, dict[str, bytes]]:
        """Phase 3 requests: each client in U2 -> the sealed shares sent to it by the
        neighbours in U2 (the ones it masks with).

        Raises:
            SecAggAbort: a client in U2 has fewer than t neighbours in U2 holding its
                shares.
        """
        self._need(self.shared, "shared keys")
        requests: dict[str, dict[str, bytes]] = {}
        for v in sorted(self.shared):
            self._enough(v, len(self._holders(v)), "neighbours holding its shares")
            routed = self._routes.get(v, {})
            requests[v] = {u: m for u, m in routed.items() if u in self.shared}
        return requests

    # -- phase 3: masked input -----------------------------------------------------------

    def receive_masked(self, client_id: str, masked: NDArray[np.integer]) -> None:
        """A client's masked input (phase 3 reply), added into the running sum."""
        self._check_member(client_id)
        bits = self.params.spec.bits
        y = np.asarray(masked)
        if client_id not in self.shared:
            self.drop(client_id, "sent a masked input without having shared keys")
            return
        if y.shape != (self.size,) or y.dtype != np.int64:
            self.drop(client_id, f"sent a {y.dtype} {y.shape} input, not int64 ({self.size},)")
            return
        if y.size and (int(y.min()) < 0 or int(y.max()) >= 1 << bits):
            self.drop(client_id, f"sent a masked input outside [0, 2^{bits})")
            return
        np.add(self._total, y, out=self._total)
        np.bitwise_and(self._total, np.int64(self.params.spec.mask), out=self._total)
        self.masked.add(client_id)

    def unmask_requests(self) -> dict[str, tuple[list[str], list[str]]]:
        """Phase 4 requests: each client in U3 -> (its neighbours in U3, its neighbours
        in U2 that sent no masked input).

        Raises:
            SecAggAbort: fewer than ``min_survivors`` masked inputs.
        """
        survivors = self.masked
        if len(survivors) < self.min_survivors:
            raise SecAggAbort(
                f"{len(survivors)} masked input(s) arrived, fewer than the "
                f"{self.min_survivors} whose sum may be revealed"
            )
        requests: dict[str, tuple[list[str], list[str]]] = {}
        for v in sorted(survivors):
            near = self.graph[v]
            alive = [u for u in near if u in survivors]
            gone = [u for u in near if u in self.shared and u not in survivors]
            self._asked_survivors[v], self._asked_dropped[v] = alive, gone
            requests[v] = (alive, gone)
        return requests

    # -- phase 4: unmask -----------------------------------------------------------------

    def receive_revealed(self, client_id: str, revealed: Mapping[str, bytes]) -> None:
        """A client's revealed shares, by the neighbour they belong to (phase 4 reply)."""
        self._check_member(client_id)
        if client_id not in self._asked_survivors:
            self.drop(client_id, "revealed shares without being asked")
            return
        alive = set(self._asked_survivors[client_id])
        gone = set(self._asked_dropped[client_id])
        index = share_index(self.cohort, client_id)
        parsed: list[tuple[str, bytes]] = []
        try:
            for u, data in revealed.items():
                if u not in alive and u not in gone:
                    raise SecAggViolation(f"revealed a share of {u!r}, which it was not asked for")
                at, share = unpack_revealed(data)
                if at != index:
                    raise SecAggViolation(f"revealed a share at index {at}, not its own {index}")
                try:
                    shamir.share_value(share)
                except ValueError as error:
                    problem = f"revealed a malformed share of {u!r}: {error}"
                    raise SecAggViolation(problem) from error
                parsed.append((u, share))
        except SecAggViolation as error:
            self.drop(client_id, str(error))
            return
        for u, share in parsed:
            table = self._self_shares if u in alive else self._key_shares
            table.setdefault(u, {})[index] = share
        self.answered.add(client_id)

    def result(self) -> tuple[NDArray[np.int64], list[str]]:
        """The unmasked sum of U3's inputs (entries in [0, |U3| (L - 1)]) and U3.

        Each secret is rebuilt from all its revealed shares, checked against each other
        (and a mask key against its owner's advertised public key); a shareholder whose
        share the others show wrong is dropped and its shares discarded.

        Raises:
            SecAggAbort: fewer than t (good) shares of a survivor's self-mask seed or of
                a dropped neighbour's mask key; shares that rebuild no secret and whose
                sender cannot be told; or an unmasked sum outside [0, |U3| (L - 1)] (a
                client masked an input outside its levels).
        """
        bits = self.params.spec.bits
        seeds, keys = self._recover_secrets()
        total = self._total.copy()
        survivors = sorted(self.masked)
        for u in survivors:
            add_mask(total, seeds[u], bits, -1)
        for u, private in keys.items():
            for v in self.graph[u]:
                if v in self.masked:
                    seed = pairwise_seed(private, self.keys[v][1], self.params.round_id, u, v)
                    add_mask(total, seed, bits, -pair_sign(v, u))
        self._check_sum(total, len(survivors))
        return total, survivors

    def _recover_secrets(self) -> tuple[dict[str, bytes], dict[str, X25519PrivateKey]]:
        """Each survivor's self-mask seed and each dropped client's mask key (the dropped
        clients some survivor masked with), dropping shareholders shown wrong."""
        while True:
            try:
                seeds = {u: self._recover(u, SELF_SEED, None) for u in sorted(self.masked)}
                keys: dict[str, X25519PrivateKey] = {}
                for u in sorted(self.shared - self.masked):
                    if any(v in self.masked for v in self.graph[u]):
                        secret = self._recover(u, MASK_KEY, self._advertised(u))
                        keys[u] = load_key_pair(secret).private
                return seeds, keys
            except _Culprit as culprit:
                self._discard(culprit.holder, culprit.reason)

    def _recover(self, owner: str, what: str, check: Callable[[bytes], bool] | None) -> bytes:
        """One secret of ``owner`` from the revealed shares; a wrong one names its sender
        (:class:`_Culprit`) where the others outvote it, else the round aborts."""
        t = self.params.threshold
        table = self._self_shares if what == SELF_SEED else self._key_shares
        shares = table.get(owner, {})
        self._enough(owner, len(shares), f"revealed shares of its {what}")
        secret, problem = _rebuild(shares, t, check)
        if secret is not None:
            return secret
        if problem is None:  # the shares agree, on a secret the owner did not advertise
            problem = f"the {len(shares)} shares agree but not on the key {owner!r} advertised"
            if len(shares) > t:
                raise SecAggAbort(
                    f"the revealed shares of client {owner!r}'s {what} give a key other than "
                    f"the one it advertised: {owner!r} dealt wrong shares"
                )
        if len(shares) > t:
            for index in sorted(shares):
                rest = {i: share for i, share in shares.items() if i != index}
                if _rebuild(rest, t, check)[0] is not None:
                    raise _Culprit(
                        self.cohort[index - 1],
                        f"unmask: revealed a share of {owner!r}'s {what} that the other "
                        f"{len(rest)} shares show wrong (a malformed share, or {owner!r} "
                        "dealt it a wrong one)",
                    )
        holders = [self.cohort[i - 1] for i in sorted(shares)]
        raise SecAggAbort(
            f"the {len(shares)} revealed shares of client {owner!r}'s {what} (from "
            f"{', '.join(holders)}) do not rebuild it ({problem}): a shareholder sent a "
            f"malformed share or {owner!r} dealt inconsistent ones, and with threshold {t} "
            "which cannot be told"
        )

    def _advertised(self, owner: str) -> Callable[[bytes], bool]:
        public = self.keys[owner][1]
        return lambda secret: load_key_pair(secret).public == public

    def _discard(self, holder: str, reason: str) -> None:
        """Drop a shareholder caught revealing a wrong share: all its shares go."""
        self.drop(holder, reason)
        self.answered.discard(holder)
        index = share_index(self.cohort, holder)
        for table in (self._self_shares, self._key_shares):
            for shares in table.values():
                shares.pop(index, None)

    def _check_sum(self, total: NDArray[np.int64], count: int) -> None:
        top = count * (self.params.spec.levels - 1)
        over = int(np.count_nonzero(total > top)) if total.size else 0
        if over:
            raise SecAggAbort(
                f"the unmasked sum of {count} inputs has {over} entries above {top}, the most "
                f"{count} quantised inputs can sum to: a client masked an input outside "
                f"[0, {self.params.spec.levels - 1}] (or a revealed secret was wrong); "
                "nothing of the round is used"
            )

    # -- bookkeeping ---------------------------------------------------------------------

    def drop(self, client_id: str, reason: str) -> None:
        """Leave a client out of the rest of the round (it did not answer, or broke the
        protocol)."""
        self.dropped.setdefault(client_id, reason)

    def _holders(self, u: str) -> list[str]:
        return [v for v in self.graph[u] if v in self.shared]

    def _check_member(self, client_id: str) -> None:
        if client_id not in self.graph:
            raise SecAggViolation(f"client {client_id!r} is not in this round's cohort")

    def _need(self, live: set[str], what: str) -> None:
        if len(live) < self.min_survivors:
            raise SecAggAbort(
                f"{len(live)} client(s) {what}, fewer than the {self.min_survivors} needed"
            )

    def _enough(self, client_id: str, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise SecAggAbort(
                f"client {client_id!r} has {count} {what}, fewer than the threshold "
                f"{self.params.threshold}"
            )


def _rebuild(
    shares: Mapping[int, bytes], threshold: int, check: Callable[[bytes], bool] | None
) -> tuple[bytes | None, str | None]:
    """(the secret, None) if ``shares`` rebuild one that passes ``check``; (None, why)
    if they do not rebuild one; (None, None) if they agree on one that fails ``check``."""
    try:
        secret = shamir.reconstruct(shares, threshold)
    except ValueError as error:
        return None, str(error)
    if check is None or check(secret):
        return secret, None
    return None, None
