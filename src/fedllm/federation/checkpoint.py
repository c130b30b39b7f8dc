"""Checkpoints: everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedllm.types import Params

CHECKPOINT_DAMAGE: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, SafetensorError)
"""What reading a truncated, edited or half-deleted checkpoint raises."""


@dataclass
class Checkpoint:
    """A saved round.

    Attributes:
        round: the last completed round.
        tensors: named groups of tensors (``global``, ``optimizer``, ...).
        meta: JSON-ready state (pipeline stage states, ...).
        clients_dir: the snapshot of per-client state, if any.
        rng: the global RNG states saved with it (see :func:`restore_rng`).
    """

    round: int
    tensors: dict[str, Params]
    meta: dict[str, Any]
    clients_dir: Path | None = None
    rng: dict[str, Any] | None = None


def restore_rng(ckpt: Checkpoint) -> None:
    """Put the python, numpy and torch global RNGs back as they were at the checkpoint."""
    if ckpt.rng is not None:
        _restore_rng(ckpt.rng)


def save_checkpoint(
    root: Path,
    round_num: int,
    tensors: dict[str, Params],
    meta: dict[str, Any],
    clients_dir: Path | None,
    keep: int,
) -> Path:
    """Write ``root/round-NNNNN`` atomically (temp dir, then rename) and prune old ones.

    RNG states (python, numpy, torch) are saved beside the tensors.
    """
    final = root / f"round-{round_num:05d}"
    tmp = root / f".round-{round_num:05d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for group, params in tensors.items():
        save_file({k: v.contiguous() for k, v in params.items()}, tmp / f"{group}.safetensors")
    if clients_dir is not None and clients_dir.exists():
        from fedllm.client.store import ClientStateStore

        ClientStateStore(clients_dir).snapshot(tmp / "clients")
    state = {"round": round_num, "groups": sorted(tensors), "meta": meta, "rng": _rng_state()}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    return sorted(p for p in root.glob("round-*") if (p / "state.json").exists())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory (RNG states are returned, not applied)."""
    state = json.loads((path / "state.json").read_text())
    tensors = {g: load_file(path / f"{g}.safetensors") for g in state["groups"]}
    clients = path / "clients"
    return Checkpoint(
        state["round"],
        tensors,
        state["meta"],
        clients if clients.exists() else None,
        state.get("rng"),
    )


def _rng_state() -> dict[str, Any]:
    """Global RNG states as plain JSON (no pickle: checkpoints may be shared)."""
    version, internal, gauss = random.getstate()
    numpy_state: Any = np.random.get_state(legacy=True)
    kind, keys, pos, has_gauss, cached = numpy_state
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def _restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
