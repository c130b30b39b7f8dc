"""Start-up: `fedllm --help` and `fedllm config` against the interpreter alone and torch's import.

Each command's wall time is the median of ``--reps`` fresh processes, beside
``python -c pass`` (the floor) and ``python -c "import torch"`` (what the two
commands no longer pay), measured in the same run. Target (the issue's): each
command under 0.5 s on this machine, i.e. without torch or transformers.

Usage: python -m benchmarks.startup [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "fedllm --help": [sys.executable, "-m", "fedllm.cli", "--help"],
    "fedllm config configs/demo.toml": [
        sys.executable,
        "-m",
        "fedllm.cli",
        "config",
        str(ROOT / "configs" / "demo.toml"),
    ],
}


def median_seconds(command: list[str], reps: int) -> float:
    """Median wall seconds of ``command`` in a fresh process, after one warm-up run."""
    times = []
    for rep in range(reps + 1):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        if rep:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    seconds = {name: median_seconds(cmd, args.reps) for name, cmd in COMMANDS.items()}
    floor = seconds["python -c pass"]
    fedllm = {k: v for k, v in seconds.items() if k.startswith("fedllm")}
    write_result(
        "startup",
        {
            "seconds": seconds,
            "over_interpreter": {k: v / floor for k, v in seconds.items()},
            "target_s": TARGET_S,
            "meets_target": all(v < TARGET_S for v in fedllm.values()),
        },
    )


if __name__ == "__main__":
    main()
