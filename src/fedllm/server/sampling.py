"""Seeded client sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedllm.seeding import derive_seed
from fedllm.types import ClientId


def sample_clients(
    clients: Sequence[ClientId], per_round: int, seed: int, round_num: int
) -> list[ClientId]:
    """``per_round`` distinct clients drawn uniformly, a pure function of (seed, round).

    Returns them in the order of ``clients``. If fewer clients exist, all are taken.
    """
    if per_round >= len(clients):
        return list(clients)
    rng = np.random.default_rng(derive_seed(seed, "sample", round_num))
    chosen = set(rng.choice(len(clients), size=per_round, replace=False).tolist())
    return [cid for i, cid in enumerate(clients) if i in chosen]
