"""Memory: peak RSS of a tiny-model LoRA run with 10 vs 100 clients.

Each run is a separate process (peak RSS is per process). Same data, same
clients per round, same rounds; only the number of clients changes, so the
client count must not change memory beyond the clients' persistent state.
Measured for federated mode and for local mode (which keeps one state per
client, on disk). Target: peak(100) / peak(10) <= 1.10.

Usage: python -m benchmarks.memory_clients [--clients 10 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]

OVERRIDES = [
    'data.source="pydoc"',
    'data.partition="iid"',
    "data.seq_len=48",
    "data.max_examples_per_client=none",
    "data.min_client_examples=2",
    "server.rounds=3",
    "server.clients_per_round=2",
    "client.local_steps=3",
    "eval.every=100",  # evaluate at round 0 and at the end only: eval time grows with clients
]


def peak_rss(clients: int, mode: str, out: Path) -> float:
    """Run the tiny recipe in a fresh process and return its peak RSS (MiB)."""
    command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / "tiny.toml")]
    command += ["--out", str(out), "--quiet", "--set", f"data.num_clients={clients}"]
    command += ["--set", f'federation.mode="{mode}"']
    for item in OVERRIDES:
        command += ["--set", item]
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == clients, summary["clients"]
    return float(summary["peak_rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs=2, default=[10, 100])
    args = parser.parse_args()
    few, many = args.clients
    result: dict[str, object] = {"clients": [few, many], "target_ratio": 1.10}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("federated", "local"):
            small = peak_rss(few, mode, Path(tmp) / f"{mode}-{few}")
            large = peak_rss(many, mode, Path(tmp) / f"{mode}-{many}")
            result[mode] = {
                f"peak_rss_mb_{few}": small,
                f"peak_rss_mb_{many}": large,
                "ratio": large / small,
                "meets_target": large / small <= 1.10,
            }
    write_result("memory_clients", result)


if __name__ == "__main__":
    main()
