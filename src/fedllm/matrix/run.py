"""Run a matrix: its prepared model, then every cell, each resumed from disk if done.

Every cell's config is built and checked before anything runs, so a bad override
fails in seconds, naming its cell. A cell whose run directory already holds a
finished run with the same overrides is read back, not rerun: an interrupted
matrix continues where it stopped. A cell whose config digest (:func:`config_digest`)
is in an earlier ``matrix.json`` given as ``reuse`` is taken from it: a committed
matrix grows by new rows without rerunning the old ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.config import Config, ConfigError, dump_config, load_config
from fedllm.matrix.metrics import cell_metrics, no_attack_cost
from fedllm.matrix.spec import Cell, Matrix

CELL_FILE = "cell.json"
"""Beside a cell's run: the overrides it ran with (a finished cell with other
overrides is rerun)."""

PREPARED = "prepared_model"
"""The prepared base model's folder in the matrix's output directory."""

PREPARE_STAMP = "matrix_prepare.json"
"""In the prepared model's folder: the config and overrides it was made with."""


@dataclass
class CellResult:
    """One finished cell: what it was and what it measured."""

    cell: Cell
    metrics: dict[str, float]
    reused: bool
    digest: str
    borrowed: bool = False
    """Taken from the earlier ``matrix.json`` given as ``reuse`` (not from a run here)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.cell.name,
            "attack": self.cell.attack,
            "defense": self.cell.defense,
            "fraction": self.cell.fraction,
            "partition": self.cell.partition,
            "config_digest": self.digest,
            "metrics": self.metrics,
        }


Progress = Callable[[str, int, int], None]
"""Told ``(what, done, total)`` before each step (the prepared model, then each cell)."""


def run_matrix(
    matrix: Matrix,
    out: Path,
    progress: Progress | None = None,
    reuse: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every cell of ``matrix`` into ``out/cells/<cell>`` and write ``out/matrix.json``.

    Args:
        reuse: an earlier ``matrix.json``'s content: each cell whose config digest is
            one of its cells' is read from it, not run.

    Returns:
        what ``matrix.json`` holds: each cell's name, axes, config digest and metrics
        (:func:`~fedllm.matrix.metrics.cell_metrics`), the axes in order, the seconds
        each step took.

    Raises:
        ConfigError: a cell's config cannot run (every one is checked first), or
            ``reuse`` is not a matrix summary.
    """
    tell = progress or (lambda what, done, total: None)
    earlier = _earlier_cells(reuse)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_override = None
    prepared_digest = None
    prepare_s = 0.0
    if matrix.spec.prepare is not None:
        total = len(matrix.cells()) + 1
        tell("prepare the base model", 0, total)
        begun = time.perf_counter()
        prepared = _prepared_model(matrix, out)
        model_override = f"model.name={prepared}"
        prepared_digest = folder_digest(prepared)
        prepare_s = time.perf_counter() - begun
    cells = matrix.cells(model_override)
    configs = _checked_configs(matrix, cells)
    offset = 1 if model_override else 0
    results = []
    for index, (cell, config) in enumerate(zip(cells, configs, strict=True)):
        tell(cell.name, index + offset, len(cells) + offset)
        digest = config_digest(config, prepared_digest)
        if digest in earlier:
            results.append(CellResult(cell, earlier[digest], True, digest, borrowed=True))
            continue
        results.append(_run_cell(cell, config, out / "cells" / cell.name, digest))
    tell("done", len(cells) + offset, len(cells) + offset)
    spec = matrix.spec
    summary = {
        "base": spec.base,
        "prepare": spec.prepare.config if spec.prepare is not None else None,
        "axes": {
            "partitions": list(spec.partitions),
            "defenses": list(spec.defenses),
            "attacks": list(spec.attacks),
            "fractions": spec.fractions,
        },
        "cells": [r.to_json() for r in results],
        "no_attack_cost": no_attack_cost([r.to_json() for r in results], list(spec.defenses)),
        "seconds": {
            "prepare": prepare_s,
            "prepare_recorded": _recorded_wall_s(out / "prepare") if spec.prepare else 0.0,
            "cells": sum(r.metrics.get("wall_s", 0.0) for r in results if not r.reused),
            "cells_recorded": sum(r.metrics.get("wall_s", 0.0) for r in results),
            "total": time.perf_counter() - started,
        },
        "reused_cells": sum(r.reused for r in results),
        "borrowed_cells": sum(r.borrowed for r in results),
        "prepared_model_digest": prepared_digest,
    }
    (out / "matrix.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _checked_configs(matrix: Matrix, cells: list[Cell]) -> list[Config]:
    """Each cell's config, loaded and checked; every bad one named at once."""
    configs: list[Config] = []
    problems: list[str] = []
    for cell in cells:
        try:
            configs.append(load_config(matrix.base, list(cell.overrides)))
        except ConfigError as err:
            problems.append(f"cell {cell.name}: {err}")
    if problems:
        raise ConfigError("\n".join(problems))
    return configs


def config_digest(config: Config, prepared_digest: str | None) -> str:
    """SHA-256 of the cell's resolved config (every setting, defaults included), where a
    prepared base model is named by its files' digest, not by where it lies: the same
    cell on another machine, or run from another output folder, has the same digest."""
    if prepared_digest is not None:
        model = config.model.model_copy(update={"name": f"prepared:{prepared_digest}"})
        config = config.model_copy(update={"model": model})
    return hashlib.sha256(dump_config(config).encode()).hexdigest()


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file of ``folder`` (names and bytes, in name order) but the
    matrix's own stamp: two prepared models with this digest are the same model."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != PREPARE_STAMP):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _earlier_cells(reuse: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """The metrics of an earlier matrix's cells by config digest (cells without one,
    from before digests were recorded, are not reused)."""
    if reuse is None:
        return {}
    cells = reuse.get("cells")
    if not isinstance(cells, list):
        raise ConfigError(
            "the matrix given to reuse has no 'cells' list: give a matrix.json that "
            "`fedllm matrix` wrote"
        )
    return {
        c["config_digest"]: dict(c["metrics"])
        for c in cells
        if isinstance(c, dict) and "config_digest" in c and "metrics" in c
    }


def _run_cell(cell: Cell, config: Config, run_dir: Path, digest: str) -> CellResult:
    """The cell's run (read back when it already finished with the same overrides)."""
    from fedllm.federation.runner import run

    done = _finished(run_dir, cell)
    if done is not None:
        return CellResult(cell, cell_metrics(*done), True, digest)
    result = run(config, run_dir, overwrite=True)
    (run_dir / CELL_FILE).write_text(json.dumps({"overrides": list(cell.overrides)}) + "\n")
    return CellResult(cell, cell_metrics(result.summary, result.records), False, digest)


def _finished(run_dir: Path, cell: Cell) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A finished run's summary and records in ``run_dir`` made with ``cell``'s
    overrides, or None."""
    summary, stamp, records = (run_dir / n for n in ("summary.json", CELL_FILE, "metrics.jsonl"))
    if not (summary.is_file() and stamp.is_file() and records.is_file()):
        return None
    if json.loads(stamp.read_text()).get("overrides") != list(cell.overrides):
        return None
    lines = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    return json.loads(summary.read_text()), lines


def _recorded_wall_s(run_dir: Path) -> float:
    """The seconds the run in ``run_dir`` recorded it took (``summary.json``'s
    ``wall_s``; 0 if it has none)."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return 0.0
    return float(json.loads(summary.read_text()).get("wall_s", 0.0))


def _prepared_model(matrix: Matrix, out: Path) -> Path:
    """The prepare step's run, merged and exported to ``out/prepared_model`` (reused when
    its run finished with the same config)."""
    from fedllm.federation.export import export_one
    from fedllm.federation.rundir import RunDir
    from fedllm.federation.runner import run
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained

    step = matrix.spec.prepare
    assert step is not None
    config = load_config(matrix.root / step.config, list(step.set))
    run_dir, target = out / "prepare", out / PREPARED
    stamp = {"config": step.config, "overrides": list(step.set)}
    stamp_file = target / PREPARE_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target.resolve()
    run(config, run_dir, overwrite=True)
    ws = prepare(config, with_data=False)
    export_one(ws, load_trained(RunDir(run_dir), ws.initial).pick(None, []), target, merge=True)
    stamp_file.write_text(json.dumps(stamp) + "\n")
    return target.resolve()
