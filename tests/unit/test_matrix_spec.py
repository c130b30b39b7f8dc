"""The matrix file (``fedllm matrix``): the cells its axes make, and its errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedllm.config import ConfigError
from fedllm.matrix.metrics import cell_metrics, no_attack_cost
from fedllm.matrix.spec import CLEAN, load_matrix
from fedllm.report.heatmap import matrix_grid

BASE = 'base = "run.toml"\n'


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "run.toml").write_text("seed = 0\n")
    path = tmp_path / "m.toml"
    path.write_text("[matrix]\n" + body)
    return path


def test_cells_are_clean_ones_then_every_attack_fraction_and_defense(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE + 'set = ["server.rounds=3"]\nfractions = [0.3, 0.0, 0.1]\n'
        '[matrix.partitions]\niid = ["data.partition=iid"]\nnat = []\n'
        '[matrix.attacks]\nflip = ["attack.update=sign_flip"]\n'
        'spread = { set = ["attack.data=backdoor"], fraction_key = "attack.share" }\n'
        '[matrix.defenses]\nfedavg = []\nmedian = ["server.aggregator=median"]\n',
    )
    cells = load_matrix(path).cells("model.name=prepared")
    clean = [c for c in cells if c.attack == CLEAN]
    assert [(c.partition, c.defense) for c in clean] == [
        ("iid", "fedavg"),
        ("iid", "median"),
        ("nat", "fedavg"),
        ("nat", "median"),
    ]
    assert all(c.fraction == 0.0 for c in clean)
    assert clean[1].overrides == (
        "model.name=prepared",
        "server.rounds=3",
        "data.partition=iid",
        "server.aggregator=median",
    )
    attacked = [c for c in cells if c.attack != CLEAN]
    assert len(attacked) == 2 * 2 * 2 * 2  # partitions x attacks x non-zero fractions x defenses
    spread = next(c for c in attacked if c.attack == "spread" and c.fraction == 0.1)
    assert spread.overrides[-2:] == ("attack.data=backdoor", "attack.share=0.1")
    flip = next(c for c in attacked if c.attack == "flip" and c.fraction == 0.3)
    assert flip.overrides[-1] == "attack.fraction=0.3"
    assert flip.name == "iid__fedavg__flip__30"
    assert len({c.name for c in cells}) == len(cells)
    only = load_matrix(path)
    only = type(only)(only.spec.model_copy(update={"attacked_partitions": ["nat"]}), only.root)
    narrowed = only.cells()
    assert {c.partition for c in narrowed if c.attack == CLEAN} == {"iid", "nat"}
    assert {c.partition for c in narrowed if c.attack != CLEAN} == {"nat"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("fractions = [0.1, 1.5]\n", "matrix.fractions"),
        ("fractions = []\n", "matrix.fractions"),
        ("colour = 1\n", "matrix.colour"),
        ('[matrix.defenses]\n"a b" = []\n', "matrix.defenses"),
        ("[matrix.attacks]\nnone = []\n", "matrix.attacks"),
        ('attacked_partitions = ["x"]\n', "attacked_partitions names \\['x'\\]"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, body: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_matrix(write(tmp_path, BASE + body))


def test_a_missing_base_or_prepare_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="matrix.base = 'gone.toml'"):
        load_matrix(write(tmp_path, 'base = "gone.toml"\n'))
    body = BASE + '[matrix.prepare]\nconfig = "pre.toml"\n'
    with pytest.raises(ConfigError, match="matrix.prepare.config = 'pre.toml'"):
        load_matrix(write(tmp_path, body))


def test_a_file_without_a_matrix_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[server]\nrounds = 1\n")
    with pytest.raises(ConfigError, match=r"one \[matrix\] table"):
        load_matrix(path)


def test_cell_metrics_read_the_summary_and_the_applied_rounds() -> None:
    summary = {
        "final": {"test_ppl": 12.5, "clients_ppl_mean": 13.0},
        "wall_s": 4.0,
        "data_attack": {
            "final": {"asr": 0.75, "false_trigger_rate": 0.0, "round": 6},
            "initial": {"asr": 0.0},
            "poisoned": {"a": 3},
        },
        "screening": {"tpr": 1.0, "fpr": 0.25, "flagged": 3, "action": "flag", "tp": 3},
    }
    records = [
        {"round": 0, "time_s": {}},
        {"round": 1, "time_s": {"aggregate": 0.5}, "excluded": ["a", "b"]},
        {"round": 2, "time_s": {"aggregate": 1.0}, "skipped": "too few"},
        {"round": 3, "time_s": {"aggregate": 1.5}, "excluded": ["c"]},
    ]
    got = cell_metrics(summary, records)
    assert got == {
        "test_ppl": 12.5,
        "clients_ppl_mean": 13.0,
        "aggregate_s": 1.0,  # rounds 1 and 3: the skipped round is no aggregation
        "excluded": 3.0,
        "rounds_applied": 2.0,
        "wall_s": 4.0,
        "data_attack.asr": 0.75,
        "data_attack.false_trigger_rate": 0.0,
        "screening.tpr": 1.0,
        "screening.fpr": 0.25,
        "screening.flagged": 3.0,
    }


def _cell(partition: str, defense: str, attack: str, fraction: float, ppl: float) -> dict:
    metrics = {"test_ppl": ppl, "aggregate_s": ppl / 10}
    return {
        "partition": partition,
        "defense": defense,
        "attack": attack,
        "fraction": fraction,
        "metrics": metrics,
    }


def test_no_attack_cost_and_the_heat_map_grid() -> None:
    cells = [
        _cell("iid", "fedavg", CLEAN, 0.0, 10.0),
        _cell("iid", "median", CLEAN, 0.0, 12.5),
        _cell("iid", "fedavg", "flip", 0.3, 40.0),
        _cell("iid", "median", "flip", 0.3, 14.0),
    ]
    cost = no_attack_cost(cells, ["fedavg", "median"])
    assert cost["reference"] == "fedavg"
    assert cost["iid"]["median"]["ppl_points"] == pytest.approx(2.5)
    assert cost["iid"]["median"]["aggregate_s_ratio"] == pytest.approx(1.25)
    assert cost["iid"]["fedavg"]["ppl_points"] == 0.0
    summary = {
        "axes": {"defenses": ["fedavg", "median"], "attacks": ["flip"], "fractions": [0, 0.1, 0.3]},
        "cells": cells,
    }
    rows, columns, values = matrix_grid(summary, "test_ppl", "iid")
    assert rows == ["fedavg", "median"]
    assert columns == [(CLEAN, 0.0), ("flip", 0.1), ("flip", 0.3)]
    assert values[0][0] == 10.0 and values[1][2] == 14.0
    assert math.isnan(values[0][1])  # a cell the matrix did not run
