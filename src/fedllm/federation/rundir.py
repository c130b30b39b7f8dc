"""The run directory: the whole story of a run on disk.

Layout::

    config.toml       the resolved configuration
    metrics.jsonl     one JSON line per round (round 0 = before training)
    summary.json      the result, written at the end
    checkpoints/      round-NNNNN/ (safetensors + server state + RNG states)
    clients/          per-client persistent state (local mode)
    final/            the trained model in Hugging Face format
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fedllm.config import Config, dump_config, load_config


class RunDirError(ValueError):
    """A run directory that can't be used as asked."""


class RunDir:
    """Paths and file handling of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    @property
    def final(self) -> Path:
        return self.root / "final"

    def create(self, config: Config, overwrite: bool = False) -> None:
        """Start a fresh run here; refuse to clobber an existing run unless asked."""
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"{self.root} already holds a run; use `fedllm resume {self.root}` "
                    "to continue it, or pass --overwrite to start again"
                )
            if not self.config_path.exists():
                raise RunDirError(
                    f"{self.root} is not empty and holds no fedllm run; refusing to "
                    "delete it: choose another --out"
                )
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_config(config))

    def load_config(self, overrides: list[str] | None = None) -> Config:
        """The run's saved configuration (with optional overrides)."""
        if not self.config_path.exists():
            raise RunDirError(f"{self.root} is not a fedllm run directory (no config.toml)")
        return load_config(self.config_path, overrides)

    def append_metrics(self, line: dict[str, Any]) -> None:
        """Append one round's record and flush it to disk."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All round records written so far."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def truncate_metrics(self, last_round: int) -> None:
        """Keep only records up to ``last_round`` (rounds past a checkpoint are redone)."""
        kept = [m for m in self.read_metrics() if m["round"] <= last_round]
        self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.exists():
            raise RunDirError(f"{self.root} has no summary.json: the run has not finished")
        result: dict[str, Any] = json.loads(self.summary_path.read_text())
        return result
