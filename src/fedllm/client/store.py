"""Per-client persistent state on disk, so memory does not grow with clients."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedllm.types import ClientId, Params

CONTROL_SUFFIX = ".control"
"""Files of SCAFFOLD control variates: ``<client>.control.safetensors``."""

OPTIMIZER_SUFFIX = ".optimizer"
"""Files of local optimizer state kept across rounds: ``<client>.optimizer.safetensors``."""

KIND_SUFFIXES = (CONTROL_SUFFIX, OPTIMIZER_SUFFIX)
"""Suffixes of every kind of client state besides the plain one."""


class ClientStateStore:
    """One safetensors file per client under ``root``; writes are atomic.

    Several kinds of client state share ``root``, told apart by ``suffix``
    (personal parameters: ``<client>.safetensors``; SCAFFOLD control variates:
    ``<client>.control.safetensors``), so one snapshot saves them all.

    Args:
        root: directory holding the state files.
        suffix: marks this kind of state in the file names ("" or ".<kind>").
    """

    def __init__(self, root: Path, suffix: str = "") -> None:
        self.root = root
        self.suffix = suffix
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, client_id: ClientId) -> Path:
        """File of one client's state."""
        return self.root / f"{client_id}{self.suffix}.safetensors"

    def get(self, client_id: ClientId) -> Params | None:
        """The client's stored state, or None if it has none yet."""
        path = self.path(client_id)
        return load_file(path) if path.exists() else None

    def put(self, client_id: ClientId, params: Params) -> None:
        """Replace the client's state (write to a temp file, then rename)."""
        final = self.path(client_id)
        tmp = final.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in params.items()}, tmp)
        os.replace(tmp, final)

    def clients(self) -> list[ClientId]:
        """Ids with stored state of this kind, sorted."""
        ids = [p.name.removesuffix(".safetensors") for p in self.root.glob("*.safetensors")]
        if self.suffix:
            return sorted(i.removesuffix(self.suffix) for i in ids if i.endswith(self.suffix))
        return sorted(i for i in ids if not i.endswith(KIND_SUFFIXES))

    def snapshot(self, target: Path) -> None:
        """Hard-link (or copy) every state file into ``target``: cheap, and safe since
        :meth:`put` never rewrites a file in place."""
        target.mkdir(parents=True, exist_ok=True)
        for path in self.root.glob("*.safetensors"):
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)

    def restore(self, source: Path) -> None:
        """Make the store hold exactly the files of a snapshot."""
        for path in self.root.glob("*.safetensors"):
            path.unlink()
        if source.exists():
            for path in source.glob("*.safetensors"):
                shutil.copy2(path, self.root / path.name)
