"""The server's side of a SecAgg+ round: who is still in, what to route, and the sum.

The server tracks the client sets of Bell et al.: U1 advertised keys, U2 shared keys,
U3 sent a masked input, U4 answered the unmask request. It forwards keys and sealed
share messages it cannot read, adds the masked inputs mod 2^bits as they arrive (one
vector in memory), and at the end reconstructs from at least t shares each survivor's
self-mask seed and each dropped client's mask key to strip the masks that do not
cancel. It learns the sum of U3's inputs and nothing else (semi-honest model).

A round that cannot finish raises :class:`SecAggAbort` naming the clients and counts;
a client whose message breaks the protocol is dropped (:attr:`SecAggServer.dropped`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from fedllm.secure import shamir
from fedllm.secure.client_round import share_index
from fedllm.secure.errors import SecAggAbort, SecAggViolation
from fedllm.secure.graph import neighbours
from fedllm.secure.keys import KEY_BYTES, load_key_pair
from fedllm.secure.masking import add_mask, pair_sign, pairwise_seed
from fedllm.secure.messages import pack_keys, unpack_revealed
from fedllm.secure.params import RoundParams


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
        self.keys: dict[str, tuple[bytes, bytes]] = {}  # U1: (pk_c, pk_s)
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

    def receive_keys(self, client_id: str, public_c: bytes, public_s: bytes) -> None:
        """A client's two public keys (phase 1 reply)."""
        self._check_member(client_id)
        if len(public_c) != KEY_BYTES or len(public_s) != KEY_BYTES:
            self.drop(client_id, f"advertised a public key that is not {KEY_BYTES} bytes")
            return
        self.keys[client_id] = (public_c, public_s)

    def share_requests(self) -> dict[str, dict[str, bytes]]:
        """Phase 2 requests: each client in U1 -> its live neighbours' ``pk_c || pk_s``.

        Raises:
            SecAggAbort: a client in U1 has fewer than t live neighbours.
        """
        live = set(self.keys)
        self._need(live, "advertised keys")
        requests: dict[str, dict[str, bytes]] = {}
        for u in sorted(live):
            near = [v for v in self.graph[u] if v in live]
            self._enough(u, len(near), "neighbours that advertised keys")
            requests[u] = {v: pack_keys(*self.keys[v]) for v in near}
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

        Raises:
            SecAggAbort: fewer than t shares of a survivor's self-mask seed or of a
                dropped neighbour's mask key arrived.
        """
        bits, t = self.params.spec.bits, self.params.threshold
        total = self._total.copy()
        survivors = sorted(self.masked)
        for u in survivors:
            shares = self._self_shares.get(u, {})
            self._enough(u, len(shares), "revealed shares of its self-mask seed")
            add_mask(total, shamir.combine(shares, t), bits, -1)
        for u in sorted(self.shared - self.masked):
            masked_with = [v for v in self.graph[u] if v in self.masked]
            if not masked_with:
                continue
            shares = self._key_shares.get(u, {})
            self._enough(u, len(shares), "revealed shares of its mask key (it dropped)")
            private = load_key_pair(shamir.combine(shares, t)).private
            for v in masked_with:
                seed = pairwise_seed(private, self.keys[v][1], self.params.round_id, u, v)
                add_mask(total, seed, bits, -pair_sign(v, u))
        return total, survivors

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
