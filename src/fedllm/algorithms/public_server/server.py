"""The server's training on the public corpus: a warm-up, and a participant in every round.

The server trains with the clients' machinery (:class:`ClientSide`, so the
same optimizer, batch size and learning rate) on a pseudo-client
``"public"`` that holds the public corpus. It trains where that data lies, so
no bytes are counted.

Each round its update joins the aggregate as a participant with share
``lambda = public.server_weight`` of the combined update::

    combined = (1 - lambda) * mean_clients + lambda * delta_public

which the weighted mean gives when the server's weight is
``lambda / (1 - lambda) * W``, ``W`` the accepted clients' total weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from fedllm.client.budget import with_fixed_steps
from fedllm.client.settings import ClientConfig
from fedllm.client.side import ClientSide
from fedllm.data import ClientData
from fedllm.data.public import PublicData
from fedllm.message import ROUND, Message
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.server.validate import find_problem
from fedllm.types import ClientUpdate, Params

if TYPE_CHECKING:
    from fedllm.config import Config

PUBLIC_ID = "public"
"""The pseudo-client the server trains as."""


def server_client_config(cfg: ClientConfig, steps: int) -> ClientConfig:
    """The clients' settings with ``steps`` steps a round and no per-client budgets or
    FedProx term (the server has no anchor to stay near)."""
    return with_fixed_steps(cfg, steps).model_copy(
        update={"prox_mu": 0.0, "drift_correction": "none"}
    )


class PublicServer:
    """The server's public-data training on the run's one model.

    Args:
        model: the model every client trains on (the server trains on it too).
        data: the public corpus.
        config: the run configuration (``[public]`` and ``[client]``).
        pad_id: the tokenizer's padding id.
    """

    def __init__(self, model: torch.nn.Module, data: PublicData, config: Config, pad_id: int):
        self.model = model
        self.data = ClientData(PUBLIC_ID, data.train, data.eval)
        self.config = config
        self.pad_id = pad_id

    def train(self, start: Params, steps: int, round_num: int) -> ClientUpdate:
        """``steps`` steps on the public corpus from ``start``, seeded by the round."""
        cfg = server_client_config(self.config.client, steps)
        side = ClientSide({PUBLIC_ID: self.data}, cfg, self.config.seed, self.pad_id, self.model)
        return side.run(PUBLIC_ID, Message(arrays=start, config={ROUND: round_num}))

    def warm_up(self, params: Params) -> dict[str, Any]:
        """Train ``params`` in place for ``public.warmup_steps`` steps (as round 0).

        Returns:
            The training metrics (``train_loss``, ``steps``, ``tokens``...), and
            ``refused`` with the reason if the update was not finite (``params``
            are then left as they were).
        """
        update = self.train(params, self.config.public.warmup_steps, 0)
        problem = find_problem(update, params)
        if problem is not None:
            return {**update.metrics, "refused": problem}
        with torch.no_grad():
            for name, delta in update.delta.items():
                params[name].add_(delta)
        return dict(update.metrics)


class PublicServerPlugin(ServerPlugin):
    """The server warms the global model up before round 1 and trains beside every
    cohort (see the module docstring); its update is folded in with share ``lambda``.

    Args:
        server: the public-data training.
        warmup_steps: steps before round 1 (0: none).
        server_steps: steps each round (0: none).
        server_weight: ``lambda``, its share of the combined update, ``0 < lambda < 1``.
    """

    name = "public_server"

    def __init__(
        self, server: PublicServer, warmup_steps: int, server_steps: int, server_weight: float
    ) -> None:
        if server_steps > 0 and not 0 < server_weight < 1:
            raise ValueError(f"public.server_weight must be in (0, 1), got {server_weight}")
        self.server = server
        self.warmup_steps = warmup_steps
        self.server_steps = server_steps
        self.server_weight = server_weight
        self._warmup: dict[str, Any] | None = None

    def begin_round(self, ctx: RoundContext) -> None:
        self._warmup = None
        if ctx.round == 1 and self.warmup_steps > 0:  # round 0's training; never on resume
            self._warmup = self.server.warm_up(ctx.params)

    def weight(self, client_weight: float) -> float:
        """``lambda / (1 - lambda) * client_weight``: a share ``lambda`` of the mean."""
        lam = self.server_weight
        return lam / (1 - lam) * client_weight

    def contribute(self, ctx: RoundContext) -> Iterable[tuple[ClientUpdate, float]]:
        if self.server_steps == 0:
            return []
        update = self.server.train(ctx.params, self.server_steps, ctx.round)
        weight = self.weight(ctx.accepted_weight)
        ctx.record.extra[self.name] = {**update.metrics, "weight": weight}
        return [(update, weight)]

    def end_round(self, ctx: RoundContext) -> None:
        if self._warmup is not None:
            ctx.record.extra["public_warmup"] = self._warmup
