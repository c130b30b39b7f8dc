"""Load what a run trained (for eval, generate, export after the fact)."""

from __future__ import annotations

from safetensors.torch import load_file

from fedllm.federation.checkpoint import list_checkpoints, load_checkpoint
from fedllm.federation.rundir import RunDir, RunDirError
from fedllm.federation.setup import Workspace
from fedllm.types import Params


def trained_states(rundir: RunDir, ws: Workspace) -> tuple[int, dict[str, Params]]:
    """(round, states) from the latest checkpoint: ``{"": global}`` or one per client.

    Clients of a local run that never trained keep the initial state.
    """
    checkpoints = list_checkpoints(rundir.checkpoints)
    if not checkpoints:
        raise RunDirError(f"{rundir.root} has no checkpoint yet: nothing trained to load")
    ckpt = load_checkpoint(checkpoints[-1], restore_rng=False)
    if "global" in ckpt.tensors:
        return ckpt.round, {"": ckpt.tensors["global"]}
    states: dict[str, Params] = {}
    if ckpt.clients_dir is not None:
        for path in sorted(ckpt.clients_dir.glob("*.safetensors")):
            states[path.stem] = load_file(path)
    if ws.data is not None:
        for cid in ws.data.clients:
            states.setdefault(cid, ws.initial)
    return ckpt.round, states


def pick_state(states: dict[str, Params], client: str | None) -> Params:
    """The global state, or the named client's (local runs)."""
    if "" in states:
        return states[""]
    if client is None:
        raise RunDirError(
            "this is a local-mode run with one model per client; pass --client, one of: "
            + ", ".join(sorted(states))
        )
    if client not in states:
        raise RunDirError(f"no client {client!r}; choose one of: {', '.join(sorted(states))}")
    return states[client]
