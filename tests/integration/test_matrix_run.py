"""``fedllm matrix`` end to end on the tiny preset: a prepared base model, clean and
attacked cells, the files it writes, and finished cells read back instead of rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.matrix.run import run_matrix
from fedllm.matrix.spec import load_matrix
from tests.support.runs import TINY


@pytest.fixture(scope="module")
def matrix_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    (root / "base.toml").write_text(TINY.read_text())
    (root / "prepare.toml").write_text(TINY.read_text())
    (root / "m.toml").write_text(
        "[matrix]\n"
        'base = "base.toml"\n'
        'set = ["server.rounds=1", "server.clients_per_round=4", "server.min_clients=4"]\n'
        "fractions = [0.0, 0.25]\n"
        "[matrix.prepare]\n"
        'config = "prepare.toml"\n'
        'set = ["federation.mode=centralized", "method.kind=full", "server.rounds=1"]\n'
        "[matrix.defenses]\n"
        "fedavg = []\n"
        'median = ["server.aggregator=median"]\n'
    )
    return root / "m.toml"


def test_the_matrix_runs_its_cells_on_the_prepared_model(matrix_file: Path) -> None:
    out = matrix_file.parent / "out"
    assert main(["matrix", str(matrix_file), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "matrix.json").read_text())
    names = [c["name"] for c in summary["cells"]]
    assert names == ["default__fedavg__none__0", "default__median__none__0"]
    prepared = out / "prepared_model"
    assert (prepared / "config.json").is_file()  # a merged, plain model
    for name in names:
        config = (out / "cells" / name / "config.toml").read_text()
        assert f'name = "{prepared.resolve()}"' in config
    median = summary["cells"][1]["metrics"]
    recorded = json.loads((out / "cells" / names[1] / "summary.json").read_text())
    assert median["test_ppl"] == recorded["final"]["test_ppl"]
    cost = summary["no_attack_cost"]["default"]["median"]
    assert cost["ppl_points"] == pytest.approx(
        median["test_ppl"] - summary["cells"][0]["metrics"]["test_ppl"]
    )
    assert (out / "heatmap_test_ppl__default.png").stat().st_size > 0
    tables = (out / "matrix.md").read_text()
    assert f"| default | median | {median['test_ppl']:.2f} | {cost['ppl_points']:+.2f} |" in tables
    assert summary["reused_cells"] == 0

    prepare_run = json.loads((out / "prepare" / "summary.json").read_text())
    assert summary["seconds"]["prepare_recorded"] == prepare_run["wall_s"] > 0

    again = run_matrix(load_matrix(matrix_file), out)
    assert again["reused_cells"] == 2
    assert again["cells"] == summary["cells"]
    # the prepared model was read back: the check took less than the run it reused,
    # whose own time is still the one recorded
    assert again["seconds"]["prepare_recorded"] == prepare_run["wall_s"]

    changed = load_matrix(matrix_file)
    spec = changed.spec.model_copy(update={"set": [*changed.spec.set, "client.local_steps=1"]})
    rerun = run_matrix(type(changed)(spec, changed.root), out)
    assert rerun["reused_cells"] == 0  # other overrides: the cells ran again
    assert rerun["cells"][0]["metrics"]["test_ppl"] != summary["cells"][0]["metrics"]["test_ppl"]


def test_a_grown_matrix_takes_its_old_cells_from_the_earlier_matrix_json(
    matrix_file: Path,
) -> None:
    first = run_matrix(load_matrix(matrix_file), matrix_file.parent / "first")
    assert first["borrowed_cells"] == 0
    digests = [c["config_digest"] for c in first["cells"]]
    assert len(set(digests)) == 2 and all(len(d) == 64 for d in digests)

    # elsewhere, with one more defense: the prepared model is made again (the same
    # bytes: the same digest although it lies elsewhere), the old cells are taken from
    # the earlier matrix.json, and only the new row runs
    grown = load_matrix(matrix_file)
    defenses = {**grown.spec.defenses, "trimmed": ["server.aggregator=trimmed_mean"]}
    spec = grown.spec.model_copy(update={"defenses": defenses})
    out = matrix_file.parent / "grown"
    summary = run_matrix(type(grown)(spec, grown.root), out, reuse=first)
    assert summary["prepared_model_digest"] == first["prepared_model_digest"]
    assert summary["borrowed_cells"] == summary["reused_cells"] == 2
    assert summary["cells"][:2] == first["cells"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["default__trimmed__none__0"]
    assert summary["seconds"]["cells"] == summary["cells"][2]["metrics"]["wall_s"]
    assert summary["seconds"]["cells_recorded"] == pytest.approx(
        sum(c["metrics"]["wall_s"] for c in summary["cells"])
    )

    # a changed setting is another config: nothing is taken
    spec = grown.spec.model_copy(update={"set": [*grown.spec.set, "client.lr=0.02"]})
    changed = run_matrix(type(grown)(spec, grown.root), matrix_file.parent / "lr", reuse=first)
    assert changed["borrowed_cells"] == 0
    assert changed["cells"][0]["config_digest"] not in digests


def test_reuse_refuses_what_is_not_a_matrix_json(
    matrix_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"rounds": []}')
    out = tmp_path / "out"
    argv = ["matrix", str(matrix_file), "--out", str(out), "--quiet", "--reuse", str(bad)]
    assert main(argv) == 2
    assert "has no 'cells' list" in capsys.readouterr().err
    bad.write_text("not json")
    assert main(argv) == 2
    assert "give a matrix.json" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_cell_is_named_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(TINY.read_text())
    (tmp_path / "m.toml").write_text(
        '[matrix]\nbase = "base.toml"\n[matrix.defenses]\nfedavg = []\n'
        'krum = ["server.aggregator=krum"]\n'
    )
    out = tmp_path / "out"
    assert main(["matrix", str(tmp_path / "m.toml"), "--out", str(out), "--quiet"]) == 2
    assert not (out / "cells").exists()
