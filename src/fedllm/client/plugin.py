"""Client plug-ins: an algorithm's client half, as hooks around the local trainer.

A client's round (:class:`fedllm.client.side.ClientSide`) calls every plug-in
at the same points, in the order they were composed:

1. :meth:`ClientPlugin.start`: change the state training starts from
   (merge personal parameters, truncate to the client's LoRA rank);
2. :meth:`ClientPlugin.local_steps`: change how many steps the client trains this
   round (a simulated attacker's own budget);
3. :meth:`ClientPlugin.train_hook`: act inside the training loop
   (:class:`~fedllm.client.hooks.TrainHook`: FedProx, SCAFFOLD's correction,
   public examples, a kept optimizer state);
4. :meth:`ClientPlugin.after_train`: change the update before it leaves
   (keep the personal part, divide by the step norm, keep only the rank's slices);
5. :meth:`ClientPlugin.encode`: add its own tensors to the reply (SCAFFOLD's
   control-variate change), which travel as ``<name>/<tensor>``.

Each call gets a :class:`ClientContext`: who, which round, a derived seed, the
broadcast's config, the plug-in's part of the broadcast, and the plug-in's own
state slot for this client, kept on disk across rounds and checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedllm.client.hooks import TrainHook
from fedllm.client.store import ClientStateStore
from fedllm.message import ConfigValue
from fedllm.types import ClientId, ClientUpdate, Params


@dataclass
class ClientContext:
    """What a plug-in knows of the round it acts in.

    Attributes:
        client_id: the client.
        round: the round (0: the server's warm-up).
        seed: this client's seed for this round (derived from the run seed).
        config: the broadcast's config record.
        part: the plug-in's own tensors in the broadcast (``<name>/...``).
        store: the plug-in's per-client state on disk (None: it keeps none).
    """

    client_id: ClientId
    round: int
    seed: int
    config: dict[str, ConfigValue] = field(default_factory=dict)
    part: Params = field(default_factory=dict)
    store: ClientStateStore | None = None

    def load(self) -> Params | None:
        """This client's stored state, or None before it has any."""
        return self.store.get(self.client_id) if self.store is not None else None

    def save(self, state: Params) -> None:
        """Replace this client's stored state."""
        if self.store is None:
            raise RuntimeError("this plug-in declared no state (ClientPlugin.keeps_state)")
        self.store.put(self.client_id, state)


class ClientPlugin:
    """The client half of an algorithm; every hook does nothing unless overridden.

    Attributes:
        name: unique among the composed plug-ins; names its parts of messages
            and its state folder (``clients/<name>/``).
        keeps_state: give it a per-client state slot.
        public_metrics: the reply metrics it adds that are no function of the data's
            content (they travel under every disclosure; see
            :mod:`fedllm.client.disclosure`).
    """

    name: str = ""
    keeps_state: bool = False
    public_metrics: frozenset[str] = frozenset()

    def start(self, ctx: ClientContext, state: Params) -> Params:
        """The state to train from, given the broadcast (as changed by earlier plug-ins)."""
        return state

    def local_steps(self, ctx: ClientContext, steps: int) -> int:
        """The optimizer steps to train this round, given ``steps`` (the client's budget,
        as changed by earlier plug-ins)."""
        return steps

    def train_hook(self, ctx: ClientContext) -> TrainHook | None:
        """A hook into the training loop for this round, or None."""
        return None

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        """The update to send, given the trained one (as changed by earlier plug-ins)."""
        return update

    def encode(self, ctx: ClientContext, update: ClientUpdate) -> Params:
        """Tensors to send beside the delta under ``<name>/``; empty: none."""
        return {}
