"""SCAFFOLD's client control variates (Karimireddy et al. 2020, option II).

Each client keeps ``c_i``, an estimate of its own gradient direction, across
rounds; the server keeps ``c``, their mean. Local steps are corrected by
``c - c_i`` (the client's drift from the federation), and after training

    c_i+ = c_i - c + (x - y_i) / sum_t lr_t

where ``x`` is the broadcast and ``y_i`` the trained state (the paper's
``K * lr`` generalised to a learning-rate schedule). The client uploads
``c_i+ - c_i`` beside its delta; the server adds the sum of those over N to
``c``. Untrained clients hold ``c_i = 0``, so partial participation keeps
``c`` the mean of all ``c_i``.
"""

from __future__ import annotations

import torch

from fedllm.client.store import ClientStateStore
from fedllm.types import ClientId, Params


class ControlVariates:
    """The clients' ``c_i``, one file per client (zero until a client first trains).

    Args:
        store: per-client storage for the variates.
        template: the exchanged state, for the names, shapes and dtypes of ``c_i``.
    """

    def __init__(self, store: ClientStateStore, template: Params) -> None:
        self.store = store
        self.template = {k: (tuple(v.shape), v.dtype) for k, v in template.items()}

    def of(self, client_id: ClientId) -> Params:
        """The client's control variate ``c_i``."""
        stored = self.store.get(client_id)
        if stored is not None:
            return stored
        return {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in self.template.items()}

    def correction(self, client_id: ClientId, server: Params) -> Params:
        """``c - c_i``: what each local step is moved against."""
        own = self.of(client_id)
        return {k: server[k] - own[k] for k in server}

    def advance(self, client_id: ClientId, server: Params, delta: Params, lr_sum: float) -> Params:
        """Store ``c_i+`` after local training; return ``c_i+ - c_i`` to upload.

        ``delta`` is ``y_i - x`` (the client's shared update) and ``lr_sum``
        the sum of its steps' learning rates. A non-finite result (a diverged
        client) is not stored, so the client keeps its previous ``c_i``; the
        server rejects that update anyway.
        """
        if lr_sum <= 0:
            raise ValueError(
                f"SCAFFOLD needs local steps with a positive learning rate, got {lr_sum}"
            )
        with torch.no_grad():
            change = {k: -server[k] - delta[k] / lr_sum for k in server}
            if all(bool(torch.isfinite(t).all()) for t in change.values()):
                own = self.of(client_id)
                self.store.put(client_id, {k: own[k] + change[k] for k in own})
        return change
