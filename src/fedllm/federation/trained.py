"""Load what a run trained (for eval, generate, export after the fact)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from safetensors.torch import load_file

from fedllm.federation.checkpoint import list_checkpoints, load_checkpoint
from fedllm.federation.rundir import RunDir, RunDirError
from fedllm.types import ClientId, Params


class OwnParts(Protocol):
    """A split of a model state into a shared part and each client's own part (the
    personal algorithm's :class:`~fedllm.algorithms.personal.split.PersonalSplit`)."""

    @property
    def active(self) -> bool:
        """Whether it selects any parameter."""
        ...

    def split(self, state: Params) -> tuple[Params, Params]:
        """``(shared, own)`` parts of ``state``."""
        ...

    def merge(self, shared: Params, own: Params) -> Params:
        """The full state from its two parts."""
        ...


OWN_PARTS_SLOT = "personal"
"""The client-state slot the own parts are checkpointed in (the plug-in's name)."""


@dataclass
class Trained:
    """The states of a run's latest checkpoint; client states load on demand.

    Attributes:
        round: the checkpoint's round.
        initial: the state before training.
        global_state: the global model (its shared part when parameters are
            personal), or None for a local-mode run.
        client_files: per-client state files (local runs: whole states;
            personalised runs: the personal parts).
        split: the personal split, when the run had one.
    """

    round: int
    initial: Params
    global_state: Params | None
    client_files: dict[ClientId, Path] = field(default_factory=dict)
    split: OwnParts | None = None

    @property
    def shared(self) -> bool:
        """One model for everyone (federated without personal parts, centralized)."""
        return self.global_state is not None and self.split is None

    def state_of(self, client: ClientId) -> Params:
        """The full state ``client``'s model has."""
        path = self.client_files.get(client)
        own = load_file(path) if path is not None else None
        if self.global_state is None:
            return own or self.initial
        if self.split is None:
            return self.global_state
        return self.split.merge(self.global_state, own or self.split.split(self.initial)[1])

    def pick(self, client: ClientId | None, known: list[ClientId]) -> Params:
        """The named client's model, or the global one (local runs need a name)."""
        if client is not None and client not in known:
            raise RunDirError(f"no client {client!r}; choose one of: {', '.join(known)}")
        if client is not None:
            return self.state_of(client)
        if self.global_state is None:
            raise RunDirError(
                "this is a local-mode run with one model per client; pass --client, one of: "
                + ", ".join(known)
            )
        if self.split is None:
            return self.global_state
        return self.split.merge(self.global_state, self.split.split(self.initial)[1])


def load_trained(rundir: RunDir, initial: Params, split: OwnParts | None = None) -> Trained:
    """The latest checkpoint's states (client states are only located, not loaded)."""
    checkpoints = list_checkpoints(rundir.checkpoints)
    if not checkpoints:
        raise RunDirError(f"{rundir.root} has no checkpoint yet: nothing trained to load")
    ckpt = load_checkpoint(checkpoints[-1])
    active = split if split is not None and split.active else None
    files = {}
    if ckpt.clients_dir is not None:
        # local runs: whole client models at the top; personalised runs: the personal
        # plug-in's slot (other plug-ins' state, e.g. SCAFFOLD variates, is no model)
        folder = ckpt.clients_dir / OWN_PARTS_SLOT if active else ckpt.clients_dir
        files = {p.stem: p for p in sorted(folder.glob("*.safetensors"))}
    return Trained(ckpt.round, initial, ckpt.tensors.get("global"), files, active)
