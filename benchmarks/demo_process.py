"""The whole demo process: `make demo`'s two runs, their wall time, and what evaluation costs.

Part 1 runs the two commands of ``make demo`` (``configs/demo.toml`` federated, then
``federation.mode=local``), each in a fresh process after the model cache exists,
and reads from each run's ``metrics.jsonl`` the seconds spent in setup, training
rounds and evaluation: the wall time and evaluation's share of it.

Part 2 times fedllm's held-out evaluation (:func:`fedllm.eval.evaluate.evaluate`: logits
only for scored positions) against the plain loop a user would write, ``model(**batch)
.loss`` (``benchmarks/plain_job.py``'s ``held_out_loss``) over the same examples in
the same batches, on the demo's model (LoRA, bf16 autocast where the recipe chooses
it) and every held-out example the demo scores (each client's eval split and the test
split). Both in this process, alternated, median of ``--reps``. Target (the issue's):
fedllm's evaluation at most 1.10x the plain loop.

Usage: python -m benchmarks.demo_process [--reps 5] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from benchmarks.plain_job import held_out_loss
from fedllm.config import load_config
from fedllm.eval.evaluate import evaluate
from fedllm.federation.setup import prepare
from fedllm.model.device import autocast, input_device, use_bf16

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "demo.toml"
TARGET = 1.10
DEMO_RUNS = {"federated": [], "local": ["--set", 'federation.mode="local"']}


def demo_run(extra: list[str], out: Path) -> dict[str, Any]:
    """One of `make demo`'s runs in a fresh process: its wall time and time split."""
    command = [sys.executable, "-m", "fedllm.cli", "run", str(RECIPE), "--out", str(out)]
    command += ["--overwrite", "--quiet", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eval_s = sum(r["time_s"].get("eval", 0.0) for r in records)
    setup_s = records[0]["time_s"]["setup"]
    rounds_s = sum(r["time_s"].get("round", 0.0) for r in records[1:])
    return {
        "wall_s": wall,
        "setup_s": setup_s,
        "rounds_s": rounds_s,
        "eval_s": eval_s,
        "eval_share": eval_s / wall,
        "evaluations": sum(1 for r in records if r.get("eval")),
    }


def seconds(work: Callable[[], object]) -> float:
    """Wall seconds ``work()`` takes."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def eval_cost(reps: int) -> dict[str, Any]:
    ws = prepare(load_config(RECIPE))
    assert ws.data is not None
    examples = [e for c in ws.data.clients.values() for e in c.eval] + list(ws.data.test)
    size = ws.config.eval.batch_size
    bf16 = use_bf16(ws.config.client.bf16, input_device(ws.model))
    pairs = [(e.input_ids, e.labels) for e in examples]

    def fedllm() -> object:
        return evaluate(ws.model, examples, size, ws.pad_id, bf16)

    def plain() -> object:  # the plain script's loop, under the same autocast
        with autocast(input_device(ws.model), bf16):
            return held_out_loss(ws.model, pairs, size, ws.pad_id)

    fedllm(), plain()  # warm-up
    fedllm_s, plain_s = [], []
    for _ in range(reps):  # alternated
        fedllm_s.append(seconds(fedllm))
        plain_s.append(seconds(plain))
    ratio = statistics.median(fedllm_s) / statistics.median(plain_s)
    return {
        "examples": len(examples),
        "batch_size": size,
        "bf16": bf16,
        "fedllm_s": statistics.median(fedllm_s),
        "plain_s": statistics.median(plain_s),
        "fedllm_runs_s": fedllm_s,
        "plain_runs_s": plain_s,
        "ratio": ratio,
        "meets_target": ratio <= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-demo", action="store_true", help="only part 2")
    args = parser.parse_args()
    result: dict[str, Any] = {"config": "configs/demo.toml", "target_ratio": TARGET}
    if not args.skip_demo:
        with tempfile.TemporaryDirectory(prefix="fedllm-demo-") as tmp:
            runs = {name: demo_run(extra, Path(tmp) / name) for name, extra in DEMO_RUNS.items()}
        wall = sum(r["wall_s"] for r in runs.values())
        result["demo"] = {
            **runs,
            "wall_s": wall,
            "eval_share": sum(r["eval_s"] for r in runs.values()) / wall,
        }
    result["evaluation_vs_plain_loop"] = eval_cost(args.reps)
    write_result("demo_process", result)


if __name__ == "__main__":
    main()
