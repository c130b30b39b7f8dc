"""Every fine-tuning method on the same federation and budget (issue: PEFT family).

For each method recipe (configs/<method>.toml; lora = configs/demo.toml) and
each federation (chitchat by user, chatterbot by category), one run in its own
process with the same clients, rounds and local steps. Records trainable
parameters, bytes up per round, final mean and worst-client held-out
perplexity, wall time per round and peak memory into
benchmarks/results/methods.json: how much communication PEFT saves against
full fine-tuning, and at what quality cost.

Usage: python -m benchmarks.methods [--methods lora full ...] [--rounds 3] [--steps 5]
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
METHODS = ["full", "lora", "prompt", "prefix", "ptuning", "ia3", "adapter"]
FEDERATIONS = {
    "chitchat-by-user": ['data.source="chitchat"', 'data.partition_by="user"'],
    "chatterbot-by-category": ['data.source="chatterbot"', 'data.partition_by="category"'],
}


def recipe(method: str) -> Path:
    """The method's own recipe (its learning rate and settings)."""
    return ROOT / "configs" / ("demo.toml" if method == "lora" else f"{method}.toml")


def run_one(method: str, federation: list[str], budget: list[str], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "fedllm.cli", "run", str(recipe(method))]
    command += ["--out", str(out), "--quiet", "--set", 'data.partition="natural"']
    for item in [*federation, *budget]:
        command += ["--set", item]
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["round"] > 0]
    return {
        "trainable_parameters": summary["trainable_parameters"],
        "payload_bytes": summary["payload_bytes"],
        "bytes_up_per_round": summary["bytes_up"] / max(1, len(rounds)),
        "initial_ppl_mean": summary["initial"].get("clients_ppl_mean"),
        "final_ppl_mean": summary["final"].get("clients_ppl_mean"),
        "final_ppl_worst": summary["final"].get("clients_ppl_worst"),
        "round_s": sum(r["time_s"]["round"] for r in rounds) / max(1, len(rounds)),
        "peak_rss_mb": summary["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--federations", nargs="+", default=list(FEDERATIONS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    budget = [
        f"server.rounds={args.rounds}",
        f"client.local_steps={args.steps}",
        "data.num_clients=4",
        "server.clients_per_round=2",
        "data.max_eval_examples=16",
        "data.max_test_examples=32",
    ]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for federation in args.federations:
            results[federation] = {}
            for method in args.methods:
                print(f"== {federation} / {method}", flush=True)
                out = Path(tmp) / f"{federation}-{method}"
                results[federation][method] = run_one(method, FEDERATIONS[federation], budget, out)
    write_result("methods", {"budget": budget, "results": results})


if __name__ == "__main__":
    main()
