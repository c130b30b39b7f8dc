"""Every benchmark's written usage runs as written (issue 26): `python -m benchmarks.<name>`
from the repository root, as `make bench` calls them; `python benchmarks/<name>.py`
fails on `import benchmarks.common`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_usage_lines_name_the_module_form() -> None:
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert scripts
    for script in scripts:
        for line in re.findall(r"Usage:.*", script.read_text()):
            assert "python benchmarks/" not in line, f"{script.name}: {line}"
            if "python" in line:
                assert f"python -m benchmarks.{script.stem}" in line, f"{script.name}: {line}"
