"""Which clients of a simulated federation are malicious."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedllm.security.attacks.settings import AttackConfig
from fedllm.seeding import derive_seed
from fedllm.settings import check_client_names


def malicious_clients(attack: AttackConfig, clients: Iterable[str], seed: int) -> list[str]:
    """The malicious clients, sorted: ``attack.clients`` as named, else
    ``round(attack.fraction * n)`` of the ``n`` clients drawn from the run seed (the
    same clients in every run with that seed and federation; a simulation's choice, no
    secret).

    Raises:
        ConfigError: ``attack.clients`` names a client the federation lacks.
    """
    known = sorted(clients)
    if attack.clients:
        check_client_names("attack.clients", attack.clients, known)
        return sorted(set(attack.clients))
    count = round(attack.fraction * len(known))
    if count == 0:
        return []
    order = np.random.default_rng(derive_seed(seed, "attack", "malicious")).permutation(len(known))
    return sorted(known[i] for i in order[:count])
