"""Everything a client does in a round, written once for every engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from fedllm.client.budget import client_steps
from fedllm.client.disclosure import Disclosure, disclosed
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.settings import ClientConfig
from fedllm.client.store import ClientStateStore
from fedllm.client.train import compute_update
from fedllm.data import ClientData
from fedllm.message import ConfigValue, Message
from fedllm.seeding import derive_seed
from fedllm.types import ClientId, ClientUpdate, join_parts, split_parts

ClientHalves = Callable[[ClientUpdate, Mapping[str, ConfigValue]], ClientUpdate]
"""The client halves of the aggregation pipeline (clip, noise, ...), given the
broadcast's config (which carries the stages' parameters)."""

NUM_EXAMPLES = "num_examples"
"""Config key of a reply's example count (the aggregation weight)."""

TRAIN = "train"
"""The phase in which a client trains from the broadcast and replies with its update."""


def no_stages(update: ClientUpdate, config: Mapping[str, ConfigValue]) -> ClientUpdate:
    """Client halves of an empty pipeline: the update as it is."""
    return update


@dataclass
class ClientSide:
    """A client's round: start state, local training, then what it keeps and sends.

    The plug-ins (:class:`~fedllm.client.plugin.ClientPlugin`) act in their
    order at each point: they change the start state, hook into training,
    change the update, and add their parts to the reply; then the pipeline's
    client halves run over the update.

    Attributes:
        clients: each client's data, by id.
        cfg: local training settings.
        seed: the run seed (each client's seed derives from it and the round).
        pad_id: the tokenizer's padding id.
        model: the model every client trains on in turn (one in memory).
        plugins: the algorithms' client halves, in order.
        client_halves: the client side of the aggregation pipeline.
        store: where plug-ins keep per-client state (each in its own slot).
        disclosure: which of the update's metrics the reply may carry
            (:mod:`fedllm.client.disclosure`).
    """

    clients: Mapping[ClientId, ClientData]
    cfg: ClientConfig
    seed: int
    pad_id: int
    model: torch.nn.Module
    plugins: Sequence[ClientPlugin] = field(default_factory=tuple)
    client_halves: ClientHalves = no_stages
    store: ClientStateStore | None = None
    disclosure: Disclosure = "all"

    def __post_init__(self) -> None:
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"client plug-ins need unique non-empty names, got {names}")
        if any(p.keeps_state for p in self.plugins) and self.store is None:
            raise ValueError("a client plug-in keeps state but the client side has no store")

    def handle(self, client_id: ClientId, phase: str, message: Message) -> Message:
        """Answer one message (the simulator and the Flower client app call this)."""
        if phase != TRAIN:
            raise ValueError(f"the training client answers phase {TRAIN!r}, not {phase!r}")
        return self.reply(self.run(client_id, message))

    def run(self, client_id: ClientId, message: Message) -> ClientUpdate:
        """Train ``client_id`` from the broadcast ``message``; the update, with the
        plug-ins' parts, before encoding."""
        data = self.clients[client_id]
        state, parts = split_parts(message.arrays)
        seed = derive_seed(self.seed, "client", message.round, client_id)
        contexts = [self._context(p, client_id, message, parts, seed) for p in self.plugins]
        for plugin, ctx in zip(self.plugins, contexts, strict=True):
            state = plugin.start(ctx, state)
        steps = client_steps(self.cfg, client_id, len(data.train), self.seed)
        for plugin, ctx in zip(self.plugins, contexts, strict=True):
            steps = plugin.local_steps(ctx, steps)
        hooks: list[TrainHook] = []
        for plugin, ctx in zip(self.plugins, contexts, strict=True):
            hook = plugin.train_hook(ctx)
            if hook is not None:
                hooks.append(hook)
        update = compute_update(self.model, state, data, self.cfg, seed, self.pad_id, steps, hooks)
        for plugin, ctx in zip(self.plugins, contexts, strict=True):
            update = plugin.after_train(ctx, update)
        for plugin, ctx in zip(self.plugins, contexts, strict=True):
            part = plugin.encode(ctx, update)
            if part:
                update.parts[plugin.name] = part
        update = self.client_halves(update, message.config)
        return replace(update, metrics=disclosed(update.metrics, self.disclosure, self.public))

    @property
    def public(self) -> frozenset[str]:
        """The plug-ins' public metrics (they travel under every disclosure)."""
        return frozenset().union(*(p.public_metrics for p in self.plugins))

    @staticmethod
    def reply(update: ClientUpdate) -> Message:
        """The message that carries ``update`` to the server."""
        return Message(
            arrays=join_parts(update.delta, update.parts),
            config={NUM_EXAMPLES: update.num_examples},
            metrics=dict(update.metrics),
        )

    def _context(
        self,
        plugin: ClientPlugin,
        client_id: ClientId,
        message: Message,
        parts: dict[str, dict[str, torch.Tensor]],
        seed: int,
    ) -> ClientContext:
        store = self.store.slot(plugin.name) if plugin.keeps_state and self.store else None
        return ClientContext(
            client_id, message.round, seed, message.config, parts.get(plugin.name, {}), store
        )
