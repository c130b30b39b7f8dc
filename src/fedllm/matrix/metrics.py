"""What a matrix cell reports, read from its run's ``summary.json`` and round records."""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

SECTIONS = ("data_attack", "update_attack", "screening")
"""Sections of ``summary.json`` whose numbers a cell reports (attack success rates;
screening's true and false positive rates), as ``<section>.<key>``."""


def cell_metrics(summary: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    """A cell's numbers.

    - ``test_ppl``, ``clients_ppl_mean``: the final global model's perplexity on the
      clean test split and the clients' clean held-out splits (never poisoned);
    - ``aggregate_s``: the server's seconds per applied round from the end of the
      cohort's replies to the stepped model (the rule, plug-ins, server optimizer),
      mean over rounds;
    - ``excluded``: updates the rule left out, summed over rounds;
    - every number under ``summary.json``'s :data:`SECTIONS` (nested keys joined by ``.``);
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
    for section in SECTIONS:
        out.update(_numbers(summary.get(section, {}), section))
    return out


def _numbers(tree: Any, prefix: str) -> dict[str, float]:
    """Every int or float leaf of ``tree`` (nested dicts), keyed by its dotted path."""
    if isinstance(tree, dict):
        found: dict[str, float] = {}
        for key, value in tree.items():
            found.update(_numbers(value, f"{prefix}.{key}"))
        return found
    if isinstance(tree, bool) or not isinstance(tree, int | float):
        return {}
    return {prefix: float(tree)}


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
