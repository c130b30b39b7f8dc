"""The run directory: the whole story of a run on disk.

Layout::

    config.toml       the resolved configuration
    metrics.jsonl     one JSON line per round (round 0 = before training)
    summary.json      the result, written at the end
    started_rounds    one line per round start (starts after the last checkpoint are
                      charged again on resume)
    checkpoints/      round-NNNNN/ (safetensors + server state + RNG states)
    clients/          per-client persistent state (local mode)
    final/            the trained model in Hugging Face format
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedllm.config import Config, dump_config, load_config

MARKER = ".fedllm-run"
STARTED = "started_rounds"
"""One line per round start, appended before the round plays."""
FLOWER_DONE = ".flower-done"
"""Written by the Flower ServerApp when it is done: the submission's token."""

RUN_ENTRIES = (
    "config.toml",
    "metrics.jsonl",
    "summary.json",
    "eval.json",
    "inspect.json",
    "audit.json",
    STARTED,
    "checkpoints",
    "clients",
    "final",
    "report",
    FLOWER_DONE,
    "admission.json",
    MARKER,
)
"""Everything a run writes; --overwrite removes these and nothing else."""


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

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def check_new(self, overwrite: bool) -> None:
        """Refuse to start over an existing run (unless ``overwrite``), in a folder that
        holds anything but a fedllm run, or where nothing can be written."""
        check_writable(self.root, "--out")
        if not self.root.exists() or not any(self.root.iterdir()):
            return
        if not self.marker.exists():
            raise RunDirError(
                f"{self.root} is not empty and holds no fedllm run; refusing to write "
                "into it: choose another --out"
            )
        if not overwrite:
            raise RunDirError(
                f"{self.root} already holds a run; use `fedllm resume {self.root}` "
                "to continue it, or pass --overwrite to start again"
            )

    def create(self, config: Config, overwrite: bool = False) -> None:
        """Start a fresh run here, removing only a previous run's own files."""
        self.check_new(overwrite)
        for name in RUN_ENTRIES:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_config(config))
        self.marker.write_text("fedllm run directory\n")

    def check_run(self) -> None:
        """Refuse a folder that ``fedllm run`` did not make (it writes the marker file).

        Raises:
            RunDirError: naming the folder and what it lacks.
        """
        if not self.root.is_dir():
            raise RunDirError(f"{self.root} is not a folder; give a run directory")
        if not self.marker.is_file():
            raise RunDirError(
                f"{self.root} is not a fedllm run directory (no {MARKER} file, which "
                "`fedllm run` writes); refusing to use it: give a folder `fedllm run` made"
            )

    def load_config(self, overrides: list[str] | None = None) -> Config:
        """The run's saved configuration (with optional overrides).

        Raises:
            RunDirError: the folder is not a run directory.
        """
        self.check_run()
        if not self.config_path.exists():
            raise RunDirError(f"{self.root} is not a fedllm run directory (no config.toml)")
        return load_config(self.config_path, overrides)

    @property
    def started_path(self) -> Path:
        return self.root / STARTED

    def mark_started(self, round_num: int) -> None:
        """Record, durably, that ``round_num`` is about to be played: one line per start,
        never rewritten, so every attempt at a round that crashed is known on resume
        (:meth:`started_rounds`)."""
        with self.started_path.open("a") as file:
            file.write(f"{round_num}\n")
            file.flush()
            os.fsync(file.fileno())

    def started_rounds(self) -> list[int]:
        """Every round start recorded so far, in order (a torn last line is skipped)."""
        try:
            lines = self.started_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [int(line) for line in lines if line.strip().isdigit()]

    def append_metrics(self, line: dict[str, Any]) -> None:
        """Append one round's record and flush it to disk."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All round records written so far (a torn last line, from a crash, is ignored)."""
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise RunDirError(
                        f"{self.metrics_path}:{number} is not valid JSON; fix or remove that line"
                    ) from None
        return records

    def truncate_metrics(self, last_round: int) -> None:
        """Keep only records up to ``last_round`` (rounds past a checkpoint are redone).

        Written to a temp file and renamed, so an interruption loses nothing.
        """
        kept = [m for m in self.read_metrics() if m["round"] <= last_round]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
        os.replace(tmp, self.metrics_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.exists():
            raise RunDirError(f"{self.root} has no summary.json: the run has not finished")
        result: dict[str, Any] = json.loads(self.summary_path.read_text())
        return result


def check_writable(path: Path, option: str) -> None:
    """Refuse an output location that cannot be written, before anything slow runs.

    ``path`` may not exist yet: its nearest existing ancestor must be a folder in
    which a file can be created (a probe file is made and removed at once).

    Raises:
        RunDirError: naming ``option``, the path and why it can't be used.
    """
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path}: exists and is not a folder; choose another {option}")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(
            f"{option} {path}: {ancestor} is a file, so no folder can be made under it; "
            f"choose another {option}"
        )
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".fedllm-probe-"):
            pass
    except OSError as err:
        raise RunDirError(
            f"{option} {path}: cannot write in {ancestor} ({err.strerror or err}); "
            f"choose another {option}"
        ) from None
