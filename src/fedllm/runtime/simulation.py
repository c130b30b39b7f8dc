"""The embedded simulator: one base model in memory, clients are swapped-in state."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from fedllm.client.personal import PersonalState
from fedllm.client.train import compute_update
from fedllm.config import ClientConfig
from fedllm.data import ClientData
from fedllm.runtime.engine import ClientDone
from fedllm.seeding import derive_seed
from fedllm.types import ClientId, ClientUpdate, Params

ClientHalf = Callable[[ClientUpdate], ClientUpdate]


class SimulationEngine:
    """Trains clients one after another on a single shared model.

    A client is its data plus whatever state it is handed; the model's
    trainable parameters are overwritten with each client's start state, so
    memory is O(base model + one client).

    Args:
        model: the model to train (trainable parameters are the exchanged state).
        clients: each client's data, by id.
        cfg: local training settings.
        seed: the run seed (each client's seed is derived from it and the round).
        pad_id: the tokenizer's padding id.
        client_half: the client side of the aggregation pipeline.
        personal: each client's personal parameters, if any are configured.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        clients: Mapping[ClientId, ClientData],
        cfg: ClientConfig,
        seed: int,
        pad_id: int,
        client_half: ClientHalf,
        personal: PersonalState | None = None,
    ) -> None:
        self.model = model
        self.clients = clients
        self.cfg = cfg
        self.seed = seed
        self.pad_id = pad_id
        self.client_half = client_half
        self.personal = personal

    def train(
        self,
        assignments: Sequence[tuple[ClientId, Params]],
        round_num: int,
        on_client_done: ClientDone | None = None,
    ) -> Iterator[ClientUpdate]:
        """Run each assigned client's local update in turn, yielding each as it is done."""
        for client_id, start in assignments:
            seed = derive_seed(self.seed, "client", round_num, client_id)
            if self.personal is not None:
                start = self.personal.full_start(client_id, start)
            raw = compute_update(
                self.model, start, self.clients[client_id], self.cfg, seed, self.pad_id
            )
            if self.personal is not None:  # personal parts stay here, on the client
                raw = self.personal.keep(client_id, raw)
            update = self.client_half(raw)
            if on_client_done is not None:
                on_client_done(update)
            yield update
