"""Everything a client does in a round, written once for every engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from fedllm.client.budget import client_steps
from fedllm.client.fednova import normalize
from fedllm.client.mix import PublicMix
from fedllm.client.personal import PersonalState
from fedllm.client.rank import RankPlan
from fedllm.client.scaffold import ControlVariates
from fedllm.client.store import ClientStateStore
from fedllm.client.train import compute_update
from fedllm.config import ClientConfig
from fedllm.data import ClientData
from fedllm.seeding import derive_seed
from fedllm.server.validate import all_finite
from fedllm.types import ClientId, ClientUpdate, Params

ClientHalf = Callable[[ClientUpdate], ClientUpdate]
"""The client halves of the aggregation pipeline (clip, noise, ...)."""


@dataclass
class ClientSide:
    """A client's round: start state, local training, then what it keeps and sends.

    In order: merge the client's personal parameters into the broadcast;
    truncate it to the client's LoRA rank (heterogeneous ranks); train its step
    budget (SCAFFOLD-corrected if it holds control variates; public examples
    mixed into its batches if it holds the public corpus; continuing its own
    optimizer state if that is kept); keep the personal
    part of the update; move its control variate and attach the change; divide
    by its step norm (FedNova); keep only its rank's slices; run the pipeline's
    client halves.

    Attributes:
        clients: each client's data, by id.
        cfg: local training settings.
        seed: the run seed (each client's seed derives from it and the round).
        pad_id: the tokenizer's padding id.
        client_half: the client side of the aggregation pipeline.
        personal: each client's personal parameters, if any are configured.
        controls: each client's SCAFFOLD control variate, if SCAFFOLD is on.
        fednova: send FedNova-normalised updates.
        ranks: each client's LoRA rank, if ranks are heterogeneous.
        public: the public examples mixed into every client's batches, if any.
        optimizer_states: each client's local optimizer state, if kept across rounds.
    """

    clients: Mapping[ClientId, ClientData]
    cfg: ClientConfig
    seed: int
    pad_id: int
    client_half: ClientHalf
    personal: PersonalState | None = None
    controls: ControlVariates | None = None
    fednova: bool = False
    ranks: RankPlan | None = None
    public: PublicMix | None = None
    optimizer_states: ClientStateStore | None = None

    def run(
        self,
        model: torch.nn.Module,
        client_id: ClientId,
        broadcast: Params,
        extra: Params,
        round_num: int,
    ) -> ClientUpdate:
        """Train ``client_id`` from ``broadcast`` (and the server's ``extra``) on ``model``."""
        data = self.clients[client_id]
        seed = derive_seed(self.seed, "client", round_num, client_id)
        start = (
            broadcast if self.personal is None else self.personal.full_start(client_id, broadcast)
        )
        if self.ranks is not None:  # a low-rank client trains the truncated model
            start = self.ranks.start(client_id, start)
        steps = client_steps(self.cfg, client_id, len(data.train), self.seed)
        correction = None
        if self.controls is not None:
            correction = self.controls.correction(client_id, extra)
        inner = None
        if self.optimizer_states is not None:
            inner = self.optimizer_states.get(client_id) or {}
        update = compute_update(
            model, start, data, self.cfg, seed, self.pad_id, steps, correction, self.public, inner
        )
        if self.optimizer_states is not None and inner and all_finite(inner):
            self.optimizer_states.put(client_id, inner)
        if self.personal is not None:  # personal parts stay here, on the client
            update = self.personal.keep(client_id, update)
        if self.controls is not None:
            change = self.controls.advance(client_id, extra, update.delta, update.metrics["lr_sum"])
            update = replace(update, extra=change)
        if self.fednova:
            update = normalize(update, self.cfg)
        if self.ranks is not None:  # only the rank-r_i slices leave the client
            update = self.ranks.upload(update)
        return self.client_half(update)
