"""Long local training, few rounds: local steps per round at an equal token budget.

DiLoCo / Photon recipe (Douillard et al. 2023; Sani et al. 2024) against
synchronous training: a Llama trained from scratch on the Python
documentation (configs/pretrain_scratch.toml's shape, a smaller BPE
vocabulary), split IID among the clients, every client in every round. Each
client takes the same number of AdamW steps in total (``--budget``); with
``H`` local steps per round the run has ``budget / H`` rounds, so every run
trains on the same tokens and only the communication differs:

* ``H = 1``: synchronous, one local step per round;
* ``H = 10, 50, 200``: local training;

each with FedAvg (server lr 1) and with DiLoCo's outer Nesterov (lr 0.7,
momentum 0.9), both with a fresh AdamW every round at a constant rate and
the example-weighted mean (how these rows were first taken); and ``diloco``,
DiLoCo as its paper defines it: outer Nesterov, each client's AdamW kept
across rounds, one warm-up (5% of the budget) and cosine decay over all of a
client's steps in the run, the uniform mean. One more reference,
``sync-adam``: one local SGD step of lr 1 (the client sends its clipped
gradient) and server Adam (lr 1e-3, bias corrected), i.e. data-parallel Adam
on the pooled batch, the usual synchronous baseline.

Records per run: final held-out perplexity (test split and client mean),
total bytes up + down, bytes per token, tokens, wall and training seconds.
Writes benchmarks/results/local_steps.json and local_steps.png (perplexity
against bytes).

About 12 minutes on 2 busy cores (one torch thread per run).

Usage: python -m benchmarks.local_steps [--budget 400] [--local-steps 1 10 50 200]
       python -m benchmarks.local_steps --replot
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
FRESH = [
    "client.keep_optimizer_state=false",
    'client.lr_schedule="constant"',
    "client.warmup_steps=0",
    'client.lr_schedule_span="round"',
    'server.weighting="examples"',
]
"""A fresh AdamW every round at a constant rate, the example-weighted mean (overriding
the recipe's DiLoCo settings)."""
NESTEROV = ['server.optimizer="nesterov"', "server.lr=0.7", "server.momentum=0.9"]
WARMUP_SHARE = 0.05
"""DiLoCo rows: the warm-up's share of a client's steps in the run."""
OUTER = {
    "fedavg": [*FRESH, 'server.optimizer="fedavg"', "server.lr=1.0"],
    "nesterov": [*FRESH, *NESTEROV],
    "diloco": [
        *NESTEROV,
        "client.keep_optimizer_state=true",
        'client.lr_schedule="cosine"',
        'client.lr_schedule_span="run"',
        'server.weighting="uniform"',
    ],
}
LABELS = {
    "fedavg": "FedAvg, fresh AdamW",
    "nesterov": "Nesterov, fresh AdamW",
    "diloco": "DiLoCo (kept AdamW, run schedule, uniform)",
    "sync-adam": "sync-adam (data-parallel Adam)",
}
SYNC_ADAM = [
    *FRESH,
    'client.optimizer="sgd"',
    "client.lr=1.0",
    "client.weight_decay=0.0",
    'server.optimizer="fedadam"',
    "server.lr=1e-3",
    "server.beta1=0.9",
    "server.beta2=0.99",
    "server.tau=1e-8",
    "server.bias_correction=true",
]


def run_one(settings: list[str], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "fedllm.cli", "run"]
    command += [str(ROOT / "configs" / "pretrain_scratch.toml"), "--out", str(out), "--quiet"]
    for item in settings:
        command += ["--set", item]
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["round"] > 0]
    return {
        "rounds": summary["rounds"],
        "initial_test_ppl": summary["initial"]["test_ppl"],
        "final_test_ppl": summary["final"]["test_ppl"],
        "final_clients_ppl_mean": summary["final"]["clients_ppl_mean"],
        "bytes": summary["bytes_up"] + summary["bytes_down"],
        "bytes_per_round": (summary["bytes_up"] + summary["bytes_down"]) / summary["rounds"],
        "tokens": summary["tokens"],
        "tokens_per_round": summary["tokens"] / summary["rounds"],
        "bytes_per_token": summary["bytes_per_token"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": sum(r["time_s"]["train"] for r in trained),
        "wall_s": wall,
        "final_train_loss": trained[-1]["train_loss"],
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {
        "fedavg": "tab:blue",
        "nesterov": "tab:orange",
        "diloco": "tab:red",
        "sync-adam": "tab:green",
    }
    offsets = {"fedavg": (4, 5), "nesterov": (4, -12), "diloco": (-40, -12), "sync-adam": (-60, 5)}
    for outer, colour in colours.items():
        runs = [(name, r) for name, r in results.items() if r["outer"] == outer]
        if not runs:
            continue
        xs = [r["bytes"] / 1e6 for _, r in runs]
        ys = [r["final_test_ppl"] for _, r in runs]
        ax.plot(xs, ys, marker="o", color=colour, label=LABELS[outer])
        for (_, r), x, y in zip(runs, xs, ys, strict=True):
            label = f"H={r['local_steps']}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=offsets[outer])
    ax.set(
        xscale="log",
        xlabel="total bytes sent, up + down (MB, log)",
        ylabel="final test perplexity",
        title="equal token budget: local steps per round vs communication",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=400, help="AdamW steps per client")
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--outer", nargs="+", default=[*OUTER, "sync-adam"])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (on 2 busy cores, 2 threads ran 4 to 10x slower than 1)",
    )
    parser.add_argument("--name", default="local_steps")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        plot(saved["results"], RESULTS / f"{args.name}.png")
        return
    bad = [h for h in args.local_steps if args.budget % h]
    if bad:
        parser.error(f"--budget {args.budget} is not a multiple of local steps {bad}")
    shared = [
        f"model.vocab_size={args.vocab}",
        f"data.num_clients={args.clients}",
        f"server.clients_per_round={args.clients}",
        f"data.seq_len={args.seq_len}",
        f"client.batch_size={args.batch}",
        "data.max_eval_examples=32",
        "data.max_test_examples=64",
        f"run.threads={args.threads}",
    ]
    plan: list[tuple[str, str, int, list[str]]] = []
    for outer in args.outer:
        steps = [1] if outer == "sync-adam" else args.local_steps
        for h in steps:
            settings = SYNC_ADAM if outer == "sync-adam" else OUTER[outer]
            if outer == "diloco":
                settings = [*settings, f"client.warmup_steps={round(WARMUP_SHARE * args.budget)}"]
            plan.append((f"{outer}/H={h}", outer, h, settings))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, outer, h, settings in plan:
            rounds = args.budget // h
            print(f"== {name}: {rounds} rounds", flush=True)
            budget = [
                f"client.local_steps={h}",
                f"server.rounds={rounds}",
                f"eval.every={rounds}",
                f"run.checkpoint_every={rounds}",
            ]
            out = Path(tmp) / name.replace("/", "-")
            results[name] = {
                "outer": outer,
                "local_steps": h,
                **run_one([*shared, *budget, *settings], out),
            }
    plot(results, RESULTS / f"{args.name}.png")
    write_result(
        args.name,
        {
            "budget_steps_per_client": args.budget,
            "shared": shared,
            "outer": {**OUTER, "sync-adam": SYNC_ADAM},
            "diloco_warmup_steps": round(WARMUP_SHARE * args.budget),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
