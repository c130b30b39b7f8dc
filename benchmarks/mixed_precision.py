"""Mixed precision on this machine: time per local step of each precision setting vs the
fp32 plain PyTorch loop, for LoRA and for full fine-tuning, measured in one run.

For each method (LoRA as in the demo, and full fine-tuning), on the demo's model, client
and batch (4 x 64 tokens): the plain loop a user would write (fp32, AdamW, clip) is the
baseline; fedllm's local trainer (``train_locally``) then runs the same steps with
- ``fp32``: everything in float32;
- ``autocast``: ``client.bf16 = true`` (bf16 autocast of forward and backward; weights,
  gradients and optimizer state fp32);
- ``bf16-base`` (LoRA only): ``model.dtype = "bfloat16"``: the frozen base held in
  bf16, the adapters fp32 (peft keeps adapter weights fp32);
- ``bf16-base+autocast`` (LoRA only): both.
Each figure is the median seconds per step over ``--reps`` repetitions of ``--steps``
steps after a warm-up, with the first step's loss next to fp32's (relative difference).
Target (LoRA): the fastest correct setting at most 0.6x the plain loop's step.

Usage: python -m benchmarks.mixed_precision [--steps 6] [--reps 3] [--methods lora full]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import FP32, write_result
from benchmarks.round_overhead import plain_loop
from fedllm.client.train import train_locally
from fedllm.config import Config, load_config
from fedllm.data import Example
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.state import set_trainable_state

ROOT = Path(__file__).resolve().parents[1]

TARGET = 0.6
"""Most a LoRA step may take, as a share of the fp32 plain loop's step."""

SETTINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "lora": {
        "fp32": (),
        "autocast": ("client.bf16=true",),
        "bf16-base": ('model.dtype="bfloat16"',),
        "bf16-base+autocast": ('model.dtype="bfloat16"', "client.bf16=true"),
    },
    "full": {
        "fp32": ('method.kind="full"',),
        "autocast": ('method.kind="full"', "client.bf16=true"),
    },
}


def demo_config(*overrides: str) -> Config:
    return load_config(ROOT / "configs" / "demo.toml", ["data.num_clients=2", *FP32, *overrides])


def client_examples(ws: Workspace) -> list[Example]:
    assert ws.data is not None
    return ws.data.clients[sorted(ws.data.clients)[0]].train


def plain_step_s(ws: Workspace, steps: int, reps: int) -> float:
    """Median seconds per step of the ordinary fp32 loop over the client's batches (the
    round-overhead benchmark's), after a warm-up."""
    client = sorted(ws.data.clients)[0] if ws.data is not None else ""
    times = [plain_loop(ws, client, steps, rep) / steps for rep in range(reps + 1)]
    set_trainable_state(ws.model, ws.initial)  # leave the model as it was loaded
    return statistics.median(times[1:])


def fedllm_steps(ws: Workspace, steps: int, reps: int) -> tuple[float, float]:
    """Median seconds per step of fedllm's local trainer, and the first step's loss (from
    the loaded model)."""
    examples = client_examples(ws)
    set_trainable_state(ws.model, ws.initial)
    first = train_locally(ws.model, examples, ws.config.client, 1, 0, ws.pad_id)["train_loss"]
    times = []
    for _ in range(reps + 1):
        set_trainable_state(ws.model, ws.initial)
        metrics = train_locally(ws.model, examples, ws.config.client, steps, 0, ws.pad_id)
        times.append(metrics["train_s"] / steps)
    set_trainable_state(ws.model, ws.initial)
    return statistics.median(times[1:]), first


def measure(method: str, steps: int, reps: int) -> dict[str, Any]:
    settings = SETTINGS[method]
    out: dict[str, Any] = {}
    plain: float | None = None
    fp32_loss: float | None = None
    for name, overrides in settings.items():
        ws = prepare(demo_config(*overrides))
        if plain is None:
            plain = plain_step_s(ws, steps, reps)
            out["plain_fp32_step_s"] = plain
        step_s, loss = fedllm_steps(ws, steps, reps)
        fp32_loss = loss if fp32_loss is None else fp32_loss
        out[name] = {
            "step_s": step_s,
            "over_plain": step_s / plain,
            "first_loss": loss,
            "loss_rel_diff": abs(loss - fp32_loss) / fp32_loss,
        }
        del ws
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    results = {method: measure(method, args.steps, args.reps) for method in args.methods}
    lora = results.get("lora", {})
    best = min((name for name in SETTINGS["lora"] if name in lora), key=lambda n: lora[n]["step_s"])
    write_result(
        "mixed_precision",
        {
            "model": "smollm2-135m",
            "batch": [4, 64],
            "steps": args.steps,
            "reps": args.reps,
            "bf16_cpu": bool(torch.cpu._is_avx512_bf16_supported()),
            **results,
            "lora_fastest": best,
            "lora_fastest_over_plain": lora[best]["over_plain"],
            "target_over_plain": TARGET,
            "meets_target": lora[best]["over_plain"] <= TARGET,
        },
    )


if __name__ == "__main__":
    main()
