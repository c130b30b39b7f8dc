"""Utility against privacy, and the leakage that remains, for LoRA, prompt tuning and full
fine-tuning of SmolLM2-135M on the same federation (issue 14).

For each method recipe (configs/demo.toml for LoRA, configs/prompt.toml,
configs/full.toml) and each defense, one run in its own process, then `fedllm audit`
on it:
- ``none``: plain FedAvg with uniform weights (a clip far above every update, only to
  report the update norms);
- ``dp-eps<E>``: user-level DP-FedAvg, the noise multiplier derived so that the planned
  rounds spend epsilon E at delta 1e-3; the clip is the median update norm of the
  method's ``none`` run (measured in the same run of this script);
- ``secagg``: SecAgg+ (31-bit ring), which hides each update from the server but adds
  no noise: its model should equal ``none``'s within quantisation error;
Every run inserts the same canaries into one client's data. Recorded per run: held-out
perplexity (the test split and the clients' mean), epsilon, every canary's and
control's exposure and extraction, and the membership attacks' AUC and TPR at 1% FPR
(loss and base-calibrated, pooled over clients). The paper's claim in numbers: the
noise DP adds has norm ``z C sqrt(d) / n`` against an update of norm at most C, so at
the same epsilon a method exchanging more parameters (d) loses more quality.

Writes benchmarks/results/privacy_tradeoff.json and privacy_tradeoff.png.

Usage: python -m benchmarks.privacy_tradeoff [--methods lora prompt full]
       [--epsilons 8 512] [--rounds 3] [--steps 4]  (about 45 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"lora": "demo.toml", "prompt": "prompt.toml", "full": "full.toml"}
DELTA = 1e-3
NORM_PROBE = 1e6
"""The ``none`` runs' clip: above any update, so it only reports the norms."""


def federation(rounds: int, steps: int) -> list[str]:
    """The same federation, budget and canaries for every run."""
    return [
        'data.source="chitchat"',
        'data.partition="natural"',
        'data.partition_by="user"',
        "data.num_clients=12",
        "data.max_examples_per_client=24",
        "data.max_eval_examples=12",
        "data.max_test_examples=48",
        "data.seq_len=48",
        f"server.rounds={rounds}",
        "server.clients_per_round=6",
        "server.min_clients=1",
        'server.weighting="uniform"',
        f"client.local_steps={steps}",
        f"eval.every={rounds}",
        "privacy.canaries=2",
        "privacy.canary_repeats=12",
        "privacy.canary_digits=3",
        "privacy.canary_candidates=1000",
    ]


def defenses(epsilons: list[float], clip: float | None) -> dict[str, list[str]]:
    """Each defense's settings (the DP ones need the method's clip)."""
    table: dict[str, list[str]] = {
        "none": [f"pipeline.clip_norm={NORM_PROBE}"],
        "secagg": ["secagg.enabled=true", "secagg.clip_range=0.5"],
    }
    if clip is not None:
        for eps in epsilons:
            table[f"dp-eps{eps:g}"] = [
                'privacy.dp="central"',
                f"privacy.clip_norm={clip}",
                f"privacy.target_epsilon={eps}",
                f"privacy.delta={DELTA}",
            ]
    return table


def run_and_audit(method: str, settings: list[str], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "fedllm.cli", "run", str(ROOT / "configs" / RECIPES[method])]
    command += ["--out", str(out), "--quiet"]
    for item in settings:
        command += ["--set", item]
    subprocess.run(command, check=True)
    subprocess.run([sys.executable, "-m", "fedllm.cli", "audit", str(out), "--quiet"], check=True)
    summary = json.loads((out / "summary.json").read_text())
    audit = json.loads((out / "audit.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    norms = [
        m["clip/norm"]
        for r in records
        for m in r.get("client_metrics", {}).values()
        if "clip/norm" in m
    ]
    pooled = audit["membership"]["all"]
    canaries = audit["canaries"]
    return {
        "trainable_parameters": summary["trainable_parameters"],
        "test_ppl": summary["final"].get("test_ppl"),
        "clients_ppl_mean": summary["final"].get("clients_ppl_mean"),
        "initial_test_ppl": summary["initial"].get("test_ppl"),
        "epsilon": summary.get("privacy", {}).get("epsilon"),
        "noise_multiplier": summary.get("privacy", {}).get("noise_multiplier"),
        "median_update_norm": statistics.median(norms) if norms else None,
        "canaries": [
            {
                "control": c["repeats"] == 0,
                "exposure": c["exposure"],
                "max_exposure": c["max_exposure"],
                "rank": c["rank"],
                "reproduced": c["extraction"]["reproduced"],
            }
            for c in canaries
        ],
        "mia_loss_auc": (pooled.get("loss") or {}).get("auc"),
        "mia_loss_tpr_at_1pct_fpr": (pooled.get("loss") or {}).get("tpr_at_low_fpr"),
        "mia_reference_auc": (pooled.get("reference") or {}).get("auc"),
        "mia_reference_tpr_at_1pct_fpr": (pooled.get("reference") or {}).get("tpr_at_low_fpr"),
    }


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Test perplexity, the inserted canaries' mean exposure and the reference attack's
    AUC against epsilon, one line per method; no defense and SecAgg at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("test_ppl", "held-out perplexity (log)"),
        ("exposure", "canary exposure (bits)"),
        ("mia_reference_auc", "MIA AUC (reference)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, runs in results.items():
        dp = sorted(
            (float(name.removeprefix("dp-eps")), r) for name, r in runs.items() if "eps" in name
        )
        xs = [eps for eps, _ in dp]
        for ax, (key, label) in zip(axes, panels, strict=True):
            line = ax.plot(xs, [_value(r, key) for _, r in dp], marker="o", label=method)[0]
            if "none" in runs:
                ax.axhline(_value(runs["none"], key), color=line.get_color(), ls="--", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("epsilon (delta 1e-3)")
            ax.set_title(label)
            if key == "test_ppl":
                ax.set_yscale("log")
    axes[0].legend(title="dashed: no DP")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _value(run: dict[str, Any], key: str) -> float:
    if key == "exposure":
        inserted = [c["exposure"] for c in run["canaries"] if not c["control"]]
        return statistics.mean(inserted) if inserted else float("nan")
    value = run.get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(RECIPES))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[8.0, 512.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    base = federation(args.rounds, args.steps)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results[method] = {}
            for name in ("none", "secagg"):
                print(f"== {method} / {name}", flush=True)
                settings = [*base, *defenses(args.epsilons, None)[name]]
                results[method][name] = run_and_audit(
                    method, settings, Path(tmp) / f"{method}-{name}"
                )
            clip = results[method]["none"]["median_update_norm"]
            for name, extra in defenses(args.epsilons, clip).items():
                if name in results[method]:
                    continue
                print(f"== {method} / {name} (clip {clip:.4g})", flush=True)
                results[method][name] = run_and_audit(
                    method, [*base, *extra], Path(tmp) / f"{method}-{name}"
                )
    plot(results, RESULTS / "privacy_tradeoff.png")
    write_result(
        "privacy_tradeoff",
        {"federation": base, "delta": DELTA, "epsilons": args.epsilons, "results": results},
    )


if __name__ == "__main__":
    main()
