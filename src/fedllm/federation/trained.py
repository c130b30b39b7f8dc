"""Load what a run trained (for eval, generate, export after the fact)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from fedllm.federation.checkpoint import list_checkpoints, load_checkpoint
from fedllm.federation.rundir import RunDir, RunDirError
from fedllm.types import ClientId, Params


@dataclass
class Trained:
    """The states of a run's latest checkpoint; client states load on demand.

    Attributes:
        round: the checkpoint's round.
        initial: the state before training (clients of a local run that never trained).
        global_state: the global model, or None for a local-mode run.
        client_files: a local run's per-client state files.
    """

    round: int
    initial: Params
    global_state: Params | None
    client_files: dict[ClientId, Path] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """One model for everyone (federated, centralized)."""
        return self.global_state is not None

    def state_of(self, client: ClientId) -> Params:
        """The state ``client``'s model has (the global one when shared)."""
        if self.global_state is not None:
            return self.global_state
        path = self.client_files.get(client)
        return load_file(path) if path is not None else self.initial

    def pick(self, client: ClientId | None, known: list[ClientId]) -> Params:
        """The global state, or the named client's (local runs need a name)."""
        if self.global_state is not None:
            return self.global_state
        if client is None or client not in known:
            what = "pass --client" if client is None else f"no client {client!r}"
            raise RunDirError(
                f"this is a local-mode run with one model per client; {what}, one of: "
                + ", ".join(known)
            )
        return self.state_of(client)


def load_trained(rundir: RunDir, initial: Params) -> Trained:
    """The latest checkpoint's states (client states are only located, not loaded)."""
    checkpoints = list_checkpoints(rundir.checkpoints)
    if not checkpoints:
        raise RunDirError(f"{rundir.root} has no checkpoint yet: nothing trained to load")
    ckpt = load_checkpoint(checkpoints[-1])
    if "global" in ckpt.tensors:
        return Trained(ckpt.round, initial, ckpt.tensors["global"])
    files = {}
    if ckpt.clients_dir is not None:
        files = {p.stem: p for p in sorted(ckpt.clients_dir.glob("*.safetensors"))}
    return Trained(ckpt.round, initial, None, files)
