"""Scale in the number of registered clients: 10 vs 10,000, 10 training per round.

The tiny recipe on chitchat split ``iid``, each client capped at 6 records (5 to
train on, 1 held out; 96 tokens), 10 clients sampled per round, ``eval.clients =
10`` (a seeded sample, the same every round, scored after every round). Each count runs in a fresh
process. Sampling, the client-state store and evaluation touch only the round's
clients, so neither peak RSS nor the time of a round may grow with the number
registered beyond the clients' data itself (compact arrays: 8 bytes a token).
Targets: peak RSS and median round time each at most 1.10x those of 10 clients.

Usage: python -m benchmarks.scale_clients [--clients 10 10000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.10
PER_ROUND = 10

OVERRIDES = [
    'data.source="chitchat"',
    'data.partition="iid"',
    "data.max_examples_per_client=6",
    "data.seq_len=96",
    "data.max_eval_examples=1",
    "data.min_client_examples=2",
    f"server.clients_per_round={PER_ROUND}",
    "client.local_steps=2",
    f"eval.clients={PER_ROUND}",
    "eval.every=1",
]


def measured_run(clients: int, rounds: int, out: Path) -> dict[str, Any]:
    """Run the recipe with ``clients`` registered in a fresh process; its peak RSS (MiB)
    and the median seconds of a round (training, aggregation, evaluation, checkpoint)."""
    command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / "tiny.toml")]
    command += ["--out", str(out), "--quiet", "--set", f"data.num_clients={clients}"]
    command += ["--set", f"server.rounds={rounds}"]
    for item in OVERRIDES:
        command += ["--set", item]
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == clients, summary["clients"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    trained = [r for r in records if r["round"] >= 1]
    scored = {k for k in records[-1]["eval"] if k.startswith("client/")}
    return {
        "peak_rss_mb": float(summary["peak_rss_mb"]),
        "round_s": statistics.median(r["time_s"]["round"] for r in trained),
        "eval_s": statistics.median(r["time_s"]["eval"] for r in trained),
        "clients_scored": len(scored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs=2, default=[10, 10_000])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    few, many = args.clients
    result: dict[str, Any] = {
        "clients": [few, many],
        "clients_per_round": PER_ROUND,
        "rounds": args.rounds,
        "target_ratio": TARGET,
    }
    with tempfile.TemporaryDirectory(prefix="fedllm-scale-") as tmp:
        small = measured_run(few, args.rounds, Path(tmp) / str(few))
        large = measured_run(many, args.rounds, Path(tmp) / str(many))
    memory = large["peak_rss_mb"] / small["peak_rss_mb"]
    time = large["round_s"] / small["round_s"]
    result.update(
        {
            str(few): small,
            str(many): large,
            "memory_ratio": memory,
            "round_time_ratio": time,
            "meets_target": memory <= TARGET and time <= TARGET,
        }
    )
    write_result("scale_clients", result)


if __name__ == "__main__":
    main()
