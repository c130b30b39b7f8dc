"""LoRA-update screening's true and false positive rates, per simulated attack.

Each registered attack (default settings) runs on the tiny recipe (a random 2-layer
Llama, LoRA r = 4 on q/v) with ``--clients`` clients, all sampled every round, a quarter
of them malicious (``attack.fraction = 0.25``), for ``--rounds`` rounds; screening
flags (``action = "flag"``, threshold 3.5) and counts its flags against the malicious
clients from the round each attack acts in (``summary.json``: TP/FP/FN/TN, TPR, FPR).
One row with no attack gives the false positive rate on clean rounds.

A small random model on few clients: what the rates say is which attacks change the
update's size or spectrum enough to stand out, not how screening does on a real model.

Usage: python -m benchmarks.screening_rates [--clients 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from fedllm.components import ATTACKS, load_builtin
from fedllm.config import ConfigError, load_config
from fedllm.federation.runner import run
from fedllm.report.progress import SilentReporter

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def rates_under(attack: str | None, clients: int, rounds: int, out: Path) -> dict[str, Any]:
    """Screening's summary for one attack (None: none), or why it could not run."""
    sets = [
        "algorithm.screening.enabled=true",
        f"data.num_clients={clients}",
        f"server.clients_per_round={clients}",
        f"server.rounds={rounds}",
        "eval.every=1000",
    ]
    if attack is not None:
        kind = getattr(ATTACKS.get(attack), "kind", "update")
        sets += [f"attack.{kind}='{attack}'", "attack.fraction=0.25"]
    try:
        config = load_config(TINY, sets)
    except ConfigError as err:
        return {"skipped": str(err)}
    result = run(config, out, reporter=SilentReporter())
    part: dict[str, Any] = result.summary.get("screening", {})
    return part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_builtin()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for attack in [None, *ATTACKS.names()]:
            name = attack or "none"
            rows[name] = rates_under(attack, args.clients, args.rounds, Path(tmp) / name)
            print(name, json.dumps(rows[name]))
    write_result(
        "screening_rates",
        {"clients": args.clients, "rounds": args.rounds, "fraction": 0.25, "rates": rows},
    )


if __name__ == "__main__":
    main()
