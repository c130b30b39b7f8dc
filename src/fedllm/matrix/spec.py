"""The matrix file (``fedllm matrix FILE``): a base run config, the axes, and the cells
they make.

.. code-block:: toml

    [matrix]
    base = "tiny.toml"                 # a run config, relative to this file
    set = ["server.rounds=6"]          # overrides of every cell
    fractions = [0.0, 0.1, 0.3]        # malicious share (0: the clean run)
    attacked_partitions = ["iid"]      # the attacks run on these (default: all)

    [matrix.prepare]                   # optional: train the base model first
    config = "security_base.toml"      # a run (e.g. centralized, method full), merged and
                                       # exported; every cell starts from it

    [matrix.partitions]                # the clean cells run on each
    iid = ["data.partition=iid"]
    dirichlet = ["data.partition=dirichlet", "data.dirichlet_alpha=0.3"]

    [matrix.attacks]
    backdoor = ["attack.data=backdoor"]
    spread = { set = ["attack.data=backdoor", "attack.placement=everywhere"],
               fraction_key = "attack.share" }

    [matrix.defenses]
    fedavg = []
    median = ["server.aggregator=median"]

A fraction of 0 is the **clean** cell (no attack at all) of its defense and partition,
run once and shown in every attack's 0 column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import Field, ValidationError, field_validator, model_validator

from fedllm.settings import ConfigError, Section

CLEAN = "none"
"""The attack name of a clean cell."""


class AttackAxis(Section):
    """One attack of the matrix: its overrides, and the key its fraction sets."""

    set: list[str] = Field(default_factory=list)
    fraction_key: str = Field(
        "attack.fraction",
        description="The setting each fraction of the axis is written to: the share of "
        "malicious clients, or, for an attack on every client's data, 'attack.share'.",
    )


class PrepareStep(Section):
    """A run before the matrix whose merged model every cell starts from."""

    config: str = Field(description="Its run config, relative to the matrix file.")
    set: list[str] = Field(default_factory=list)


class MatrixSpec(Section):
    base: str = Field(description="The run config every cell starts from (relative path).")
    set: list[str] = Field(default_factory=list, description="Overrides of every cell.")
    fractions: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3])
    prepare: PrepareStep | None = None
    partitions: dict[str, list[str]] = Field(default_factory=lambda: {"default": list[str]()})
    attacked_partitions: list[str] | None = Field(
        None,
        description="The partitions the attacks run on; none: all. The clean cells run on "
        "every partition (what each defense costs when nobody attacks, IID and not).",
    )
    attacks: dict[str, AttackAxis] = Field(default_factory=dict)
    defenses: dict[str, list[str]] = Field(default_factory=lambda: {"fedavg": list[str]()})

    @field_validator("attacks", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """``name = [overrides]`` is ``name = { set = [overrides] }``."""
        if isinstance(value, dict):
            return {k: {"set": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _attacked_are_partitions(self) -> MatrixSpec:
        unknown = sorted(set(self.attacked_partitions or []) - set(self.partitions))
        if unknown:
            raise ValueError(
                f"attacked_partitions names {unknown}, not in [matrix.partitions]: "
                f"choose from {sorted(self.partitions)}"
            )
        return self

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= f <= 1.0 for f in value) or len(set(value)) != len(value):
            raise ValueError(f"{value}: distinct shares in [0, 1], e.g. [0.0, 0.1, 0.3]")
        return sorted(value)

    @field_validator("attacks", "defenses", "partitions")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [n for n in value if not n or "__" in n or not n.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"names {bad}: letters, digits and single underscores only")
        if CLEAN in value:
            raise ValueError(f"{CLEAN!r} is the clean cell's name; choose another")
        return value


@dataclass(frozen=True)
class Cell:
    """One run of the matrix.

    Attributes:
        attack: the attack's name (:data:`CLEAN` for the clean run).
        defense: the defense's name.
        fraction: the attack's fraction (0 for the clean run).
        partition: the data partition's name.
        overrides: every override of the base config, in order.
    """

    attack: str
    defense: str
    fraction: float
    partition: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        """A directory name: ``<partition>__<defense>__<attack>__<fraction %>``."""
        return f"{self.partition}__{self.defense}__{self.attack}__{round(self.fraction * 100)}"


@dataclass(frozen=True)
class Matrix:
    """A loaded matrix file: its spec and where relative paths start."""

    spec: MatrixSpec
    root: Path

    @property
    def base(self) -> Path:
        return self.root / self.spec.base

    def cells(self, model_override: str | None = None) -> list[Cell]:
        """Every run, clean cells first (one per partition and defense), then the attacked
        ones; ``model_override``: prepended to each cell's overrides (the prepared model)."""
        spec = self.spec
        common = ([model_override] if model_override else []) + list(spec.set)
        cells: list[Cell] = []
        for partition, p_set in spec.partitions.items():
            for defense, d_set in spec.defenses.items():
                cells.append(Cell(CLEAN, defense, 0.0, partition, (*common, *p_set, *d_set)))
        attacked = spec.attacked_partitions
        for partition, p_set in spec.partitions.items():
            if attacked is not None and partition not in attacked:
                continue
            for attack, axis in spec.attacks.items():
                for fraction in spec.fractions:
                    if fraction == 0.0:
                        continue
                    for defense, d_set in spec.defenses.items():
                        own = (*axis.set, f"{axis.fraction_key}={fraction}")
                        overrides = (*common, *p_set, *d_set, *own)
                        cells.append(Cell(attack, defense, fraction, partition, overrides))
        return cells


def load_matrix(path: str | Path) -> Matrix:
    """The matrix file at ``path``, checked (its cells' configs are checked when run).

    Raises:
        ConfigError: unreadable TOML, no ``[matrix]`` table, a bad key or value (named),
            or a base or prepare config that does not exist.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"matrix file {path}: {err}") from None
    if set(raw) != {"matrix"}:
        raise ConfigError(
            f"matrix file {path}: holds one [matrix] table (with [matrix.attacks], "
            f"[matrix.defenses], ...), found {sorted(raw) or 'nothing'}"
        )
    try:
        spec = MatrixSpec.model_validate(raw["matrix"])
    except ValidationError as err:
        details = "; ".join(
            f"matrix.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"matrix file {path}: {details}") from None
    matrix = Matrix(spec, path.parent)
    configs = [("matrix.base", spec.base)]
    if spec.prepare is not None:
        configs.append(("matrix.prepare.config", spec.prepare.config))
    for key, relative in configs:
        if not (matrix.root / relative).is_file():
            raise ConfigError(
                f"matrix file {path}: {key} = {relative!r} is not a file next to it "
                "(paths are relative to the matrix file)"
            )
    return matrix
