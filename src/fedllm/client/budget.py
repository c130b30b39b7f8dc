"""Heterogeneous compute: how many local steps each client runs per round."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedllm.client.train import count_local_steps
from fedllm.config import ClientConfig, check_client_names
from fedllm.seeding import derive_seed
from fedllm.types import ClientId


def client_steps(cfg: ClientConfig, client_id: ClientId, num_train: int, seed: int) -> int:
    """Optimizer steps per round of one client (a property of the client, fixed by the seed).

    In order: ``local_steps_by_client[client_id]``; with ``local_steps_min``,
    a seeded uniform draw from ``[local_steps_min, local_steps]``; otherwise
    :func:`count_local_steps` (``local_steps`` or ``local_epochs``).
    """
    if client_id in cfg.local_steps_by_client:
        return cfg.local_steps_by_client[client_id]
    if cfg.local_steps_min is not None:
        rng = np.random.default_rng(derive_seed(seed, "budget", client_id))
        return int(rng.integers(cfg.local_steps_min, cfg.local_steps + 1))
    return count_local_steps(cfg, num_train)


def check_budget_clients(cfg: ClientConfig, clients: Iterable[ClientId]) -> None:
    """Refuse ``local_steps_by_client`` entries naming clients that don't exist."""
    check_client_names("client.local_steps_by_client", cfg.local_steps_by_client, clients)
