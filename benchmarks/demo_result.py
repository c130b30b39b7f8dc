"""The demo's result: configs/demo.toml in federated, local and centralized mode.

Same model, data, seed and step budget; each mode in its own process. Records
held-out perplexity by round (client mean, worst client, test split), bytes,
wall time and peak memory into benchmarks/results/demo.json.

Usage: python -m benchmarks.demo_result [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
MODES = ("federated", "local", "centralized")


def run_mode(mode: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the demo recipe in ``mode`` in a fresh process; return its summary and curve."""
    command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / "demo.toml")]
    command += ["--out", str(out), "--quiet", "--set", f'federation.mode="{mode}"']
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [
        {
            "round": r["round"],
            **{k: r["eval"][k] for k in ("clients_ppl_mean", "clients_ppl_worst", "test_ppl")},
        }
        for r in records
        if r.get("eval")
    ]
    keep = ("initial", "final", "bytes_up", "bytes_down", "wall_s", "peak_rss_mb")
    return {**{k: summary[k] for k in keep}, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {mode: run_mode(mode, Path(tmp) / mode, args.overrides) for mode in MODES}
    write_result("demo", {"config": "configs/demo.toml", "overrides": args.overrides, **result})


if __name__ == "__main__":
    main()
