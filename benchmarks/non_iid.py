"""Non-IID data x algorithm: does anything beat FedAvg when clients differ?

Chatterbot Q&A split among clients by category: the natural split (one
client per category) and Dirichlet(alpha) label skew for alpha in {0.1, 1,
100} (0.1: each client holds a few categories; 100: nearly IID). On each,
the same model, clients, rounds and local steps with FedAvg, FedProx,
SCAFFOLD and FedAdam. Each run is its own process.

Records per (partition, algorithm): held-out perplexity by round (client
mean and worst client), final values, rounds to reach a target (within 10%
of where FedAvg ends on that partition), bytes per round and the partition's
heterogeneity (label distribution per client). Writes
benchmarks/results/non_iid.json and non_iid.png.

Usage: python -m benchmarks.non_iid [--model smollm2-135m] [--rounds 6] [--steps 5]
       [--work DIR]  (keep the runs; a second call reuses the finished ones)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = {
    "natural": ['data.partition="natural"'],
    "alpha=0.1": ['data.partition="dirichlet"', "data.dirichlet_alpha=0.1"],
    "alpha=1": ['data.partition="dirichlet"', "data.dirichlet_alpha=1.0"],
    "alpha=100": ['data.partition="dirichlet"', "data.dirichlet_alpha=100.0"],
}
ALGORITHMS = {
    "fedavg": [],
    "fedprox": ["client.prox_mu=1.0"],
    "scaffold": ['client.drift_correction="scaffold"'],
    "fedadam": ['server.optimizer="fedadam"', "server.lr=5e-3", "server.tau=1e-4"],
}


def run_one(settings: list[str], out: Path) -> dict[str, Any]:
    """Run (or reuse a finished run in ``out``) and read its results."""
    if not (out / "summary.json").exists():
        command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / "demo.toml")]
        command += ["--out", str(out), "--quiet", "--overwrite"]
        for item in settings:
            command += ["--set", item]
        subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if r.get("eval")]
    rounds = [r for r in records if r["round"] > 0]
    return {
        "ppl_mean": [r["eval"]["clients_ppl_mean"] for r in evaluated],
        "ppl_worst": [r["eval"]["clients_ppl_worst"] for r in evaluated],
        "final_ppl_mean": summary["final"]["clients_ppl_mean"],
        "final_ppl_worst": summary["final"]["clients_ppl_worst"],
        "bytes_per_round": sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / len(rounds),
        "skipped_rounds": sum(1 for r in rounds if r.get("skipped")),
        "clients": summary["data"]["clients"],
    }


def rounds_to(curve: list[float], target: float) -> int | None:
    """First round (0 = before training) whose perplexity is at or below ``target``."""
    return next((i for i, value in enumerate(curve) if value <= target), None)


TARGET_SLACK = 1.10
"""Target per partition: within 10% of the client-mean perplexity FedAvg ends at."""


def add_targets(results: dict[str, dict[str, Any]]) -> None:
    """Rounds each algorithm needs to come within :data:`TARGET_SLACK` of FedAvg's final
    client-mean perplexity on the same partition (None: never within the budget)."""
    for runs in results.values():
        target = TARGET_SLACK * runs["fedavg"]["ppl_mean"][-1]
        for run in runs.values():
            run["target_ppl"] = target
            run["rounds_to_target"] = rounds_to(run["ppl_mean"], target)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 7), squeeze=False)
    for col, (partition, runs) in enumerate(results.items()):
        for algorithm, run in runs.items():
            axes[0][col].plot(run["ppl_mean"], marker="o", label=algorithm)
            axes[1][col].plot(run["ppl_worst"], marker="o", label=algorithm)
        axes[0][col].set(title=partition, xlabel="round", ylabel="client-mean held-out ppl")
        axes[1][col].set(xlabel="round", ylabel="worst-client held-out ppl")
        for row in (0, 1):
            axes[row][col].grid(alpha=0.3)
            axes[row][col].set_yscale("log")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, help="keep runs here and reuse finished ones (default: a temp dir)"
    )
    args = parser.parse_args()
    budget = [
        f'model.name="{args.model}"',
        'data.source="chatterbot"',
        'data.partition_by="category"',
        f"data.num_clients={args.clients}",
        "data.max_examples_per_client=60",
        "data.max_eval_examples=16",
        "data.max_test_examples=32",
        f"server.rounds={args.rounds}",
        f"server.clients_per_round={args.per_round}",
        f"client.local_steps={args.steps}",
        "run.checkpoint_every=1000",
    ]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for partition in args.partitions:
            results[partition] = {}
            for algorithm in args.algorithms:
                print(f"== {partition} / {algorithm}", flush=True)
                out = work / f"{partition}-{algorithm}"
                settings = [*budget, *PARTITIONS[partition], *ALGORITHMS[algorithm]]
                results[partition][algorithm] = run_one(settings, out)
    if "fedavg" in args.algorithms:
        add_targets(results)
    plot(results, RESULTS / "non_iid.png")
    write_result(
        "non_iid",
        {"budget": budget, "algorithms": ALGORITHMS, "partitions": PARTITIONS, "results": results},
    )


if __name__ == "__main__":
    main()
