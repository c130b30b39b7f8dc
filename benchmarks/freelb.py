"""FreeLB's extra compute: seconds per local step with FreeLB's K ascent steps against
the same trainer without it, measured in one process.

On a recipe's model and first client (``tiny`` by default; ``demo``: SmolLM2-135M, LoRA,
batch 4 x 64), fedllm's local trainer (``train_locally``) runs ``--steps`` steps from the
loaded state with no hook, then with FreeLB's hook for each K of ``--ks``; settings
alternate within each repetition, and each figure is the median seconds per step over
``--reps`` repetitions after a warm-up. FreeLB's K passes each cost a forward and a
backward, so the ratio is expected near K (a little more: the embedding look-up and the
perturbation's ascent step; a little less: the optimizer step is paid once).

Usage: python -m benchmarks.freelb [--configs tiny demo] [--steps 8] [--reps 3] [--ks 1 2 3 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import FP32, write_result
from fedllm.client.hooks import TrainHook
from fedllm.client.train import train_locally
from fedllm.config import load_config
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.state import set_trainable_state
from fedllm.security.freelb.client import FreeLBHook

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": "configs/tiny.toml", "demo": "configs/demo.toml"}


def step_seconds(ws: Workspace, hooks: list[TrainHook], steps: int) -> float:
    """Seconds per step of ``steps`` local steps from the loaded state (the model is left
    as it was loaded)."""
    assert ws.data is not None
    examples = ws.data.clients[sorted(ws.data.clients)[0]].train
    set_trainable_state(ws.model, ws.initial)
    metrics = train_locally(ws.model, examples, ws.config.client, steps, 0, ws.pad_id, hooks)
    set_trainable_state(ws.model, ws.initial)
    return metrics["train_s"] / steps


def measure(name: str, ks: list[int], steps: int, reps: int) -> dict[str, Any]:
    ws = prepare(load_config(ROOT / CONFIGS[name], ["data.num_clients=2", *FP32]))
    embeddings = ws.model.get_input_embeddings()

    def hooks(k: int) -> list[TrainHook]:
        return [] if k == 0 else [FreeLBHook(embeddings, k, 0.1, 1.0, 0.1)]

    settings = [0, *ks]
    times: dict[int, list[float]] = {k: [] for k in settings}
    for rep in range(reps + 1):
        for k in settings:
            seconds = step_seconds(ws, hooks(k), steps)
            if rep > 0:  # the first repetition warms up
                times[k].append(seconds)
    plain = statistics.median(times[0])
    rows = {
        f"k{k}": {
            "step_s": statistics.median(times[k]),
            "over_plain": statistics.median(times[k]) / plain,
            "over_plain_per_pass": statistics.median(times[k]) / plain / k,
        }
        for k in ks
    }
    client = ws.config.client
    return {
        "model": ws.config.model.name,
        "method": ws.config.method.kind,
        "batch": [client.batch_size, ws.config.data.seq_len],
        "plain_step_s": plain,
        **rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=["tiny"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5])
    args = parser.parse_args()
    results = {name: measure(name, args.ks, args.steps, args.reps) for name in args.configs}
    write_result(
        "freelb",
        {
            "steps": args.steps,
            "reps": args.reps,
            "ks": args.ks,
            "settings": {"step_size": 0.1, "epsilon": 1.0, "init": 0.1},
            **results,
        },
    )


if __name__ == "__main__":
    main()
