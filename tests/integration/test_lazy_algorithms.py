"""An algorithm's optional dependencies load only with it: a run without DP or secure
aggregation imports neither dp-accounting nor cryptography, and ``fedllm config``
imports no torch (the registries import a component's module on first use by name)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runs import TINY

PROBE = """
import json, sys
from fedllm.cli import main
code = main(sys.argv[1:])
watched = ("dp_accounting", "cryptography", "tenseal", "torch")
print(json.dumps({"code": code, "loaded": [m for m in watched if m in sys.modules]}))
"""


def probe(*args: str) -> dict[str, object]:
    """Run the CLI with ``args`` in a fresh interpreter: its exit code and which of the
    watched packages it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_plain_run_imports_neither_dp_accounting_nor_cryptography(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = probe("run", str(TINY), "--set", "server.rounds=1", "--out", str(out))
    assert result["code"] == 0
    assert "torch" in result["loaded"]  # it did train
    assert "dp_accounting" not in result["loaded"]
    assert "cryptography" not in result["loaded"]
    assert (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("settings", "needed"),
    [
        (
            ["privacy.dp=local", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0"],
            "dp_accounting",
        ),
        (
            ["secagg.enabled=true", "server.weighting=uniform", "server.clients_per_round=3"],
            "cryptography",
        ),
    ],
)
def test_an_algorithm_that_needs_a_dependency_loads_it(
    tmp_path: Path, settings: list[str], needed: str
) -> None:
    """The probe can see an import: turning the algorithm on loads its dependency."""
    out = tmp_path / "run"
    sets = [a for s in ["server.rounds=1", *settings] for a in ("--set", s)]
    result = probe("run", str(TINY), *sets, "--out", str(out))
    assert result["code"] == 0
    assert needed in result["loaded"]


def test_fedllm_config_imports_no_torch_nor_any_algorithm_dependency() -> None:
    result = probe("config", str(TINY))
    assert result["code"] == 0
    assert result["loaded"] == []
