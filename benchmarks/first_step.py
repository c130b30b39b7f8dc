"""Start-up: `fedllm run` from process start to its first training step, vs a plain script.

Both do the same job up to that step, each in a fresh process, the model cache
already made: import torch, transformers and peft; load the tokenizer and the model
(from the cache, or built from the preset's config for ``tiny``); chat-template and
tokenize the run's conversations (every client's train and eval records and the test
split, as fedllm's data build reads them); make the LoRA model; score the held-out
examples before training; take one optimizer step. fedllm does more inside the same
steps (labels on assistant tokens only, found by rendering each reply's prompt as well;
the data built in a forked child); the plain script labels every token. The time is
wall clock from just before the process starts until the first optimizer step returns
(``benchmarks/first_step_child.py``), the median of ``--reps`` runs each, alternating.
Target (the issue's): fedllm at most 1.10x the plain script, on tiny and on SmolLM2.

Usage: python -m benchmarks.first_step [--configs tiny demo] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import FP32, write_result
from fedllm.config import Config, load_config
from fedllm.data.build import build_client_records
from fedllm.model.load import scratch_config, smollm2_dir, tokenizer_source
from fedllm.model.presets import is_preset

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.10
CONFIGS = {"tiny": "configs/tiny.toml", "demo": "configs/demo.toml"}


def plain_job(config: Config, path: Path) -> None:
    """Write the plain script's job: the run's conversations, model and settings."""
    raw = build_client_records(config.data, config.seed)
    conversations: list[Any] = []
    held_out: list[int] = []

    def add(records: list[Any], scored: bool) -> None:
        if scored:
            held_out.extend(range(len(conversations), len(conversations) + len(records)))
        conversations.extend(r["messages"] for r in records)

    for split in raw.clients.values():  # the held-out splits as capped by data.max_*
        add(split.train, scored=False)
        add(split.eval[: config.data.max_eval_examples], scored=True)
    add(raw.test[: config.data.max_test_examples], scored=True)
    name = config.model.name
    job = {
        "tokenizer_dir": tokenizer_source(name),
        "model_dir": None if is_preset(name) else str(smollm2_dir()),
        "model_config": scratch_config(config.model).to_dict() if is_preset(name) else None,
        "lora": {
            "r": config.method.r,
            "lora_alpha": config.method.alpha,
            "target_modules": list(config.method.target_modules),
            "lora_dropout": config.method.dropout,
        },
        "conversations": conversations,
        "seq_len": config.data.seq_len,
        "held_out": held_out,
        "eval_batch": config.eval.batch_size,
        "batch_size": config.client.batch_size,
        "lr": config.client.lr,
    }
    path.write_text(json.dumps(job))


def first_step_s(args: list[str]) -> float:
    """Seconds from just before ``benchmarks.first_step_child ARGS`` starts to its first step."""
    env = {**os.environ, "FIRST_STEP_T0": repr(time.time())}
    command = [sys.executable, "-m", "benchmarks.first_step_child", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["first_step_s"])


def measure(name: str, reps: int, folder: Path) -> dict[str, Any]:
    recipe = ROOT / CONFIGS[name]
    overrides = [*FP32, "server.rounds=1"]
    job = folder / f"{name}.json"
    plain_job(load_config(recipe, overrides), job)
    fedllm_args = ["fedllm", "run", str(recipe), "--out", str(folder / name), "--quiet"]
    fedllm_args += ["--overwrite", *[a for item in overrides for a in ("--set", item)]]
    first_step_s(fedllm_args)  # warm-up: the model and tokenizer caches exist after it
    plain, fedllm = [], []
    for _ in range(reps):
        plain.append(first_step_s(["plain", str(job)]))
        fedllm.append(first_step_s(fedllm_args))
    ratio = statistics.median(fedllm) / statistics.median(plain)
    return {
        "plain_s": statistics.median(plain),
        "fedllm_s": statistics.median(fedllm),
        "plain_runs_s": plain,
        "fedllm_runs_s": fedllm,
        "conversations": len(json.loads(job.read_text())["conversations"]),
        "ratio": ratio,
        "meets_target": ratio <= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, Any] = {"target_ratio": TARGET, "reps": args.reps}
    with tempfile.TemporaryDirectory(prefix="fedllm-first-step-") as tmp:
        for name in args.configs:
            result[name] = measure(name, args.reps, Path(tmp))
    write_result("first_step", result)


if __name__ == "__main__":
    main()
