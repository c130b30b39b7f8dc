"""Per-client persistent state on disk, so memory does not grow with clients."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedllm.types import ClientId, Params


class ClientStateStore:
    """One safetensors file per client under ``root``; writes are atomic.

    Every kind of client state lives under one clients folder: a mode's own
    client models at its top (``clients/<client>.safetensors``, local mode), each
    plug-in's state in a folder named after the plug-in
    (``clients/<plugin>/<client>.safetensors``, see :meth:`slot`), so one
    snapshot saves them all.

    Args:
        root: directory holding the state files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root  # created by the first put

    def slot(self, name: str) -> ClientStateStore:
        """The store of the plug-in called ``name`` (``root/<name>``)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"a state slot needs a plain folder name, got {name!r}")
        return ClientStateStore(self.root / name)

    def path(self, client_id: ClientId) -> Path:
        """File of one client's state."""
        return self.root / f"{client_id}.safetensors"

    def get(self, client_id: ClientId) -> Params | None:
        """The client's stored state, or None if it has none yet."""
        path = self.path(client_id)
        return load_file(path) if path.exists() else None

    def put(self, client_id: ClientId, params: Params) -> None:
        """Replace the client's state (write to a temp file, then rename)."""
        final = self.path(client_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in params.items()}, tmp)
        os.replace(tmp, final)

    def clients(self) -> list[ClientId]:
        """Ids with state in this store (not in its slots), sorted."""
        if not self.root.exists():
            return []
        return sorted(p.name.removesuffix(".safetensors") for p in self.root.glob("*.safetensors"))

    def snapshot(self, target: Path) -> None:
        """Hard-link (or copy) every state file, slots included, into ``target``: cheap,
        and safe since :meth:`put` never rewrites a file in place."""
        target.mkdir(parents=True, exist_ok=True)
        if not self.root.exists():
            return
        for path in self.root.rglob("*.safetensors"):
            dest = target / path.relative_to(self.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)

    def clear(self) -> None:
        """Remove every state file, slots included."""
        if not self.root.exists():
            return
        for path in self.root.rglob("*.safetensors"):
            path.unlink()

    def restore(self, source: Path) -> None:
        """Make the store hold exactly the files of a snapshot."""
        self.clear()
        if source.exists():
            for path in source.rglob("*.safetensors"):
                dest = self.root / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
