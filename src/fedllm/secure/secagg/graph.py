"""The random neighbour graph of SecAgg+ (Bell et al., CCS 2020).

Each client masks its input only with its neighbours and secret-shares its keys only
among them, so its cost grows with its degree k, not with the cohort size n. The
graph here is a Harary-style circulant: the sorted client ids are put in a seeded
random order around a ring and each client is joined to the k/2 nearest on each side.
That is k-regular and k-connected, so no dropout of fewer than k clients cuts it.

The order is a pure function of the seed and the ids (SHA-256, no numpy generator), so
anyone holding both computes the same graph on any machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def default_degree(n: int) -> int:
    """k = 2 ceil(log2 n), capped at the largest even number below n.

    O(log n) as in Bell et al.; 2 ceil(log2 n) gives 8 neighbours at n = 16, 12 at 50,
    20 at 1000. It is the practical choice of Flower-style SecAgg+, not the (larger)
    constant of the paper's proof for a given fraction of corrupt clients; pass a larger
    degree where that bound matters. With n - 1 even and k = n - 1 the graph is complete.

    Raises:
        ValueError: n < 3 (no even degree 2 <= k < n exists).
    """
    if n < 3:
        raise ValueError(f"secure aggregation needs at least 3 clients, got {n}")
    cap = n - 1 if (n - 1) % 2 == 0 else n - 2
    return min(2 * math.ceil(math.log2(n)), cap)


def check_degree(n: int, degree: int) -> None:
    """Refuse a degree the circulant graph cannot have.

    Raises:
        ValueError: ``degree`` is odd, below 2, or not below ``n``.
    """
    if degree < 2 or degree % 2 or degree >= n:
        largest = n - 1 if (n - 1) % 2 == 0 else n - 2
        raise ValueError(
            f"secagg.degree = {degree} is invalid for {n} clients; use an even degree "
            f"in 2 .. {largest}"
        )


def neighbours(ids: Sequence[str], degree: int, seed: int) -> dict[str, list[str]]:
    """The neighbours of every client: symmetric, k = ``degree`` each, never itself.

    Args:
        ids: the cohort's distinct client ids (any order; they are sorted first).
        degree: k, even, 2 <= k < len(ids).
        seed: the ring order's seed.

    Returns:
        id -> its neighbours' ids, sorted.

    Raises:
        ValueError: duplicate ids, fewer than 3 ids, or an invalid degree.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("client ids must be distinct")
    n = len(ids)
    if n < 3:
        raise ValueError(f"secure aggregation needs at least 3 clients, got {n}")
    check_degree(n, degree)
    order = sorted(sorted(ids), key=lambda cid: _rank(seed, cid))
    half = degree // 2
    graph: dict[str, list[str]] = {}
    for position, cid in enumerate(order):
        near = {order[(position + step) % n] for step in range(-half, half + 1) if step}
        graph[cid] = sorted(near)
    return graph


def _rank(seed: int, cid: str) -> bytes:
    return hashlib.sha256(f"fedllm-secagg-graph/v1/{seed}/{cid}".encode()).digest()
