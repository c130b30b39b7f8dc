"""`make bench`: every benchmark, each writing benchmarks/results/<name>.json.

About 165 minutes on 2 cores: round overhead (2 min), memory vs clients
(1 min), the demo in three modes (9 min), every method on two federations
(16 min), four partitions x four non-IID algorithms (about 45 min), local
steps per round at an equal token budget (about 8 min), Flower loopback vs the
simulator vs Flower's no-op floor, tiny and SmolLM2 LoRA (about 4 and 12 min),
memory vs a plain script (about 10 min), mixed precision (8 min), aggregation
against memory bandwidth (1 min), time to the first step vs a plain script (5 min),
the demo's whole process and evaluation vs a plain loss loop (6 min), SecAgg+ costs
(3 min), utility and leakage under DP and SecAgg for three methods (45 min).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCHMARKS = [
    ["benchmarks.round_overhead", "--model", "smollm2-135m", "--steps", "10", "--reps", "3"],
    ["benchmarks.round_overhead", "--model", "tiny", "--steps", "20", "--reps", "3"],
    ["benchmarks.memory_clients"],
    ["benchmarks.memory_vs_plain"],
    ["benchmarks.scale_clients"],
    ["benchmarks.startup"],
    ["benchmarks.first_step"],
    ["benchmarks.demo_process"],
    ["benchmarks.mixed_precision"],
    ["benchmarks.aggregate"],
    ["benchmarks.secagg_cost"],
    ["benchmarks.demo_result"],
    ["benchmarks.methods"],
    ["benchmarks.non_iid"],
    ["benchmarks.local_steps"],
    ["benchmarks.flower_overhead", "--model", "tiny", "--rounds", "4", "--clients", "1"],
    ["benchmarks.flower_overhead", "--model", "smollm2-135m", "--rounds", "4", "--clients", "1"],
    ["benchmarks.privacy_tradeoff"],
]


def main() -> int:
    failed = []
    for args in BENCHMARKS:
        print(f"== {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, "-m", *args], cwd=ROOT).returncode != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
