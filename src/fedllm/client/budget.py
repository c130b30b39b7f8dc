"""Heterogeneous compute: how many local steps each client runs per round (and the
seeded per-client draw that LoRA ranks use too)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedllm.client.settings import ClientConfig
from fedllm.client.train import count_local_steps
from fedllm.seeding import derive_seed
from fedllm.settings import check_client_names
from fedllm.types import ClientId


def client_steps(cfg: ClientConfig, client_id: ClientId, num_train: int, seed: int) -> int:
    """Optimizer steps per round of one client (a property of the client, fixed by the seed).

    In order: ``local_steps_by_client[client_id]``; with ``local_steps_min``,
    a seeded uniform draw from ``[local_steps_min, local_steps]``; otherwise
    :func:`count_local_steps` (``local_steps`` or ``local_epochs``).
    """
    drawn = per_client_value(
        cfg.local_steps_by_client, cfg.local_steps_min, cfg.local_steps, client_id, seed, "budget"
    )
    return count_local_steps(cfg, num_train) if drawn is None else drawn


def per_client_value(
    named: dict[ClientId, int], low: int | None, high: int, client_id: ClientId, seed: int, key: str
) -> int | None:
    """A client's own value of an integer setting, fixed by the seed: ``named[client_id]``
    if listed; else, with ``low``, a uniform draw from ``[low, high]`` seeded by
    ``(seed, key, client_id)``; else None (the setting's default applies)."""
    if client_id in named:
        return named[client_id]
    if low is not None:
        rng = np.random.default_rng(derive_seed(seed, key, client_id))
        return int(rng.integers(low, high + 1))
    return None


def with_fixed_steps(cfg: ClientConfig, steps: int) -> ClientConfig:
    """``cfg`` with exactly ``steps`` local steps a round for whoever uses it (no
    epochs, no per-client budgets): the pooled client, the server's public steps."""
    return cfg.model_copy(
        update={
            "local_steps": steps,
            "local_epochs": 0.0,
            "local_steps_min": None,
            "local_steps_by_client": {},
        }
    )


def check_budget_clients(cfg: ClientConfig, clients: Iterable[ClientId]) -> None:
    """Refuse ``local_steps_by_client`` entries naming clients that don't exist."""
    check_client_names("client.local_steps_by_client", cfg.local_steps_by_client, clients)
