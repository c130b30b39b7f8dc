"""What a matrix cell reports, read from its run's ``summary.json`` and round records."""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

SECTIONS = {
    "data_attack": (
        "final",
        (
            "asr",
            "false_trigger_rate",
            "success_rate",
            "off_topic_rate",
            "harmful_rate",
            "no_refusal_rate",
        ),
    ),
    "screening": (None, ("tpr", "fpr", "flagged")),
}
"""Where in ``summary.json`` a cell's attack numbers are: each section's sub-table (None:
the section itself) and the keys reported, as ``<section>.<key>`` (a data attack's
success rates after the last round; screening's true and false positive rates)."""


def cell_metrics(summary: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    """A cell's numbers.

    - ``test_ppl``, ``clients_ppl_mean``: the final global model's perplexity on the
      clean test split and the clients' clean held-out splits (never poisoned);
    - ``aggregate_s``: the server's seconds per applied round from the end of the
      cohort's replies to the stepped model (the rule, plug-ins, server optimizer),
      mean over rounds;
    - ``excluded``: updates the rule left out, summed over rounds;
    - the attack's success rates and screening's rates (:data:`SECTIONS`);
    - ``wall_s``: the run's seconds.
    """
    final = summary.get("final", {})
    rounds = [r for r in records if r.get("round", 0) >= 1 and not r.get("skipped")]
    out: dict[str, float] = {
        "test_ppl": _number(final.get("test_ppl")),
        "clients_ppl_mean": _number(final.get("clients_ppl_mean")),
        "aggregate_s": fmean(r["time_s"].get("aggregate", math.nan) for r in rounds)
        if rounds
        else math.nan,
        "excluded": float(sum(len(r.get("excluded", [])) for r in rounds)),
        "rounds_applied": float(len(rounds)),
        "wall_s": _number(summary.get("wall_s")),
    }
    for section, (part, keys) in SECTIONS.items():
        table = summary.get(section) or {}
        table = table.get(part) or {} if part is not None else table
        out.update({f"{section}.{k}": float(table[k]) for k in keys if _is_number(table.get(k))})
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def no_attack_cost(cells: list[dict[str, Any]], defenses: list[str]) -> dict[str, Any]:
    """What each defense costs when nobody attacks: per partition and defense, its clean
    cell's test perplexity minus the first defense's (the reference, e.g. FedAvg), in
    perplexity points, and the ratio of their server seconds per round."""
    reference = defenses[0]
    clean = {(c["partition"], c["defense"]): c["metrics"] for c in cells if c["fraction"] == 0}
    cost: dict[str, Any] = {"reference": reference}
    for partition in dict.fromkeys(c["partition"] for c in cells):
        base = clean.get((partition, reference))
        if base is None:
            continue
        cost[partition] = {
            d: {
                "test_ppl": m["test_ppl"],
                "ppl_points": m["test_ppl"] - base["test_ppl"],
                "aggregate_s_ratio": m["aggregate_s"] / base["aggregate_s"]
                if base["aggregate_s"] > 0
                else math.nan,
            }
            for d in defenses
            if (m := clean.get((partition, d))) is not None
        }
    return cost
