"""Pre-training on public and private text: which data, spent how, at the same budget?

A randomly initialised llama-5m (BPE tokenizer, about 1.2M parameters)
with ``configs/pretrain_public_private.toml``'s data: 4 chitchat users hold
private conversations, the server holds pydoc (public). Three regimes spend
the same number of optimizer steps of 8 examples (320 by default):

- ``public only``: the server trains on pydoc alone, centrally (the warm-up
  of the recipe, run for the whole budget; no client trains);
- ``private only``: federated training on the clients' chitchat, nothing public;
- ``mixed``: the recipe's three modes: a warm-up on pydoc, server steps on
  pydoc each round (weight 0.2) and a quarter of every client batch from pydoc.

Each is evaluated on the same held-out sets: the clients' private eval splits
(``clients_ppl_mean``), the private global test split (``test_ppl``) and the
public held-out split (``public_ppl``). Writes
benchmarks/results/pretrain_regimes.json and pretrain_regimes.png.

Usage: python -m benchmarks.pretrain_regimes [--rounds 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result
from fedllm.algorithms.public_server.server import PublicServer
from fedllm.config import Config, load_config
from fedllm.federation.evaluation import evaluate_states
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "pretrain_public_private.toml"
OFF = ["public.server_steps=0", "public.mix_ratio=0.0"]
METRICS = ("clients_ppl_mean", "test_ppl", "public_ppl")


def regimes(rounds: int, steps: int, clients: int) -> dict[str, list[str]]:
    """Overrides of the recipe per regime, each spending ``rounds x clients x steps`` steps."""
    budget = rounds * clients * steps
    client_steps, server = max(1, steps - 3), max(1, steps // 2)  # mixed, per round
    warmup = budget - rounds * (clients * client_steps + server)  # mixed: the rest
    if warmup < 0:
        raise SystemExit(f"--steps {steps} leaves the mixed regime no warm-up; use 4 or more")
    common = [f"server.rounds={rounds}", f"server.clients_per_round={clients}"]
    return {
        "public only": [*common, *OFF, f"public.warmup_steps={budget}"],
        "private only": [*common, *OFF, "public.warmup_steps=0", f"client.local_steps={steps}"],
        "mixed": [
            *common,
            f"client.local_steps={client_steps}",
            f"public.server_steps={server}",
            f"public.warmup_steps={warmup}",
        ],
    }


def run_public_only(config: Config) -> dict[str, Any]:
    """The server alone: ``public.warmup_steps`` steps on the public corpus, evaluated
    before and after (there are no rounds)."""
    start = time.perf_counter()
    ws = prepare(config)
    assert ws.public is not None
    state = {k: v.clone() for k, v in ws.initial.items()}
    before = evaluate_states(ws, lambda _cid: state, shared=True)
    trained = PublicServer(ws.model, ws.public, config, ws.pad_id).warm_up(state)
    after = evaluate_states(ws, lambda _cid: state, shared=True)
    steps = config.public.warmup_steps
    return {
        "curve": [point(0, before), point(steps, after)],
        "final": {k: after[k] for k in METRICS},
        "steps": {"client": 0, "server": steps},
        "examples": {"private": 0, "public": steps * config.client.batch_size},
        "label_tokens": trained["tokens"],
        "wall_s": time.perf_counter() - start,
    }


def run_federated(config: Config, out: Path) -> dict[str, Any]:
    """A whole run; steps and examples counted from what its records say was trained."""
    start = time.perf_counter()
    records = run(config, out).records
    batch = config.client.batch_size
    n_public = config.public.public_per_batch(batch) if config.public.mix_ratio > 0 else 0
    client_steps = server_steps = warmup_steps = 0
    tokens = 0.0
    curve = []
    for record in records:
        for metrics in record.get("client_metrics", {}).values():
            client_steps += int(metrics["steps"])
            tokens += metrics["tokens"]
        for key in ("public_warmup", "public_server"):
            if key in record:
                tokens += record[key]["tokens"]
        warmup_steps += int(record.get("public_warmup", {}).get("steps", 0))
        server_steps += int(record.get("public_server", {}).get("steps", 0))
        if record["eval"]:
            curve.append(point(client_steps + server_steps + warmup_steps, record["eval"]))
    accum = config.client.grad_accum
    return {
        "curve": curve,
        "final": {k: records[-1]["eval"][k] for k in METRICS},
        "steps": {"client": client_steps, "server": server_steps + warmup_steps},
        "examples": {
            "private": client_steps * accum * (batch - n_public),
            "public": client_steps * accum * n_public + (server_steps + warmup_steps) * batch,
        },
        "label_tokens": tokens,
        "wall_s": time.perf_counter() - start,
    }


def point(steps: int, metrics: dict[str, float]) -> dict[str, float]:
    return {"steps": steps, **{k: metrics[k] for k in METRICS}}


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "clients_ppl_mean": "private: clients' held-out ppl (mean)",
        "public_ppl": "public: pydoc held-out ppl",
    }
    fig, axes = plt.subplots(1, len(titles), figsize=(11, 4))
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for name, result in results.items():
            curve = result["curve"]
            style = ":" if len(curve) < 3 else "-"  # public only: its start and end alone
            xs, ys = [p["steps"] for p in curve], [p[key] for p in curve]
            ax.plot(xs, ys, linestyle=style, marker="o", label=name)
        ax.set(title=title, xlabel="optimizer steps spent (8 examples each)", ylabel="perplexity")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="client steps a round (private only)")
    args = parser.parse_args()
    clients = load_config(RECIPE).data.num_clients
    settings = regimes(args.rounds, args.steps, clients)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings.items():
            print(f"== {name}", flush=True)
            config = load_config(RECIPE, overrides)
            if name == "public only":
                results[name] = run_public_only(config)
            else:
                results[name] = run_federated(config, Path(tmp) / name.replace(" ", "-"))
    budgets = {sum(r["examples"].values()) for r in results.values()}
    assert len(budgets) == 1, f"the regimes spent different budgets: {budgets}"
    plot(results, RESULTS / "pretrain_regimes.png")
    write_result(
        "pretrain_regimes",
        {
            "recipe": "configs/pretrain_public_private.toml",
            "budget_examples": budgets.pop(),
            "regimes": settings,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
