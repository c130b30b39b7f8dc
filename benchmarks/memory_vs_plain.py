"""Memory: fedllm's peak RSS for the demo's job vs a plain script doing the same job.

The job: the demo's model, method and batches, ``--rounds`` rounds of
``clients_per_round`` clients x ``local_steps`` steps, and every client's held-out
examples plus the test split scored before training and after every round. fedllm runs
it as ``fedllm run configs/demo.toml`` (its summary's ``peak_rss_mb``); the plain script
(``benchmarks/plain_job.py``: transformers + peft, AdamW, clipping, ``model(**batch)``
losses) trains the same number of steps on batches of the same clients' examples and
scores the same examples as often. Each runs in a fresh process; peak RSS is the
process's ``ru_maxrss``. For full fine-tuning a federated round also holds the global
state and the aggregate besides the model (two model-sized buffers the plain script has
no use for); the result says how large they are.
Target: fedllm at most 1.05x the plain script's peak.

Usage: python -m benchmarks.memory_vs_plain [--methods lora full] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import FP32, write_result
from fedllm.config import Config, load_config
from fedllm.data import build_federated_data
from fedllm.model.load import load_tokenizer, smollm2_dir

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.05
METHODS = {"lora": FP32, "full": (*FP32, 'method.kind="full"', "client.lr=1e-5")}


def plain_job(config: Config, folder: Path) -> Path:
    """Write the plain script's job (token ids, model, optimizer settings) to ``folder``."""
    tokenizer = load_tokenizer(config.model)
    data = build_federated_data(config.data, tokenizer, config.seed)
    clients = sorted(data.clients)
    steps = config.client.local_steps
    size = config.client.batch_size
    batches = []
    for round_num in range(config.server.rounds):
        for k in range(config.server.clients_per_round):
            train = data.clients[clients[(round_num + k) % len(clients)]].train
            for step in range(steps):
                start = (step * size) % max(len(train) - size + 1, 1)
                chosen = train[start : start + size]
                batches.append([(e.input_ids, e.labels) for e in chosen])
    held_out = [e for c in clients for e in data.clients[c].eval] + list(data.test)
    lora = None
    if config.method.kind == "lora":
        lora = {
            "r": config.method.r,
            "lora_alpha": config.method.alpha,
            "target_modules": list(config.method.target_modules),
            "lora_dropout": config.method.dropout,
        }
    job = {
        "model_dir": str(smollm2_dir()),
        "lora": lora,
        "lr": config.client.lr,
        "max_grad_norm": config.client.max_grad_norm or float("inf"),
        "pad_id": int(tokenizer.pad_token_id),
        "batches": batches,
        "eval": [(e.input_ids, e.labels) for e in held_out],
        "eval_batch": config.eval.batch_size,
        "steps_per_eval": steps * config.server.clients_per_round,
    }
    path = folder / "job.pt"
    torch.save(job, path)
    return path


def plain_peak(job: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.plain_job", str(job)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def fedllm_peak(overrides: tuple[str, ...], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / "demo.toml")]
    command += ["--out", str(out), "--quiet", "--overwrite"]
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    peak = float(summary["peak_rss_mb"])
    return {"peak_rss_mb": peak, "payload_mb": summary["payload_bytes"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result: dict[str, Any] = {"rounds": args.rounds, "target_ratio": TARGET}
    with tempfile.TemporaryDirectory(prefix="fedllm-memory-") as tmp:
        for method in args.methods:
            overrides = (*METHODS[method], f"server.rounds={args.rounds}")
            config = load_config(ROOT / "configs" / "demo.toml", list(overrides))
            folder = Path(tmp) / method
            folder.mkdir()
            plain = plain_peak(plain_job(config, folder))
            fedllm = fedllm_peak(overrides, folder / "run")
            ratio = fedllm["peak_rss_mb"] / plain
            result[method] = {
                "plain_peak_rss_mb": plain,
                "fedllm_peak_rss_mb": fedllm["peak_rss_mb"],
                "payload_mb": fedllm["payload_mb"],
                "ratio": ratio,
                "meets_target": ratio <= TARGET,
            }
    write_result("memory_vs_plain", result)


if __name__ == "__main__":
    main()
