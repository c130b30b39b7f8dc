"""The matrix as Markdown tables (``OUT/matrix.md``), for a report or the docs."""

from __future__ import annotations

import math
from typing import Any

from fedllm.matrix.spec import CLEAN

SHOWN = (
    ("test_ppl", "test ppl", "{:.2f}"),
    ("data_attack.asr", "ASR", "{:.2f}"),
    ("data_attack.false_trigger_rate", "false trigger", "{:.2f}"),
    ("data_attack.success_rate", "success", "{:.2f}"),
    ("data_attack.harmful_rate", "harmful", "{:.2f}"),
    ("screening.tpr", "TPR", "{:.2f}"),
    ("screening.fpr", "FPR", "{:.2f}"),
    ("excluded", "excluded", "{:.0f}"),
)
"""The metrics a cell shows, in order, with their headers and formats (those no cell of
an attack has are left out of its table)."""


def matrix_markdown(summary: dict[str, Any]) -> str:
    """The no-attack table (each defense's clean perplexity and cost against the
    reference, per partition), then one table per attack: defenses down, each fraction's
    metrics across, the no-attack cell first."""
    parts = [_no_attack(summary)]
    for partition in summary["axes"]["partitions"]:
        for attack in summary["axes"]["attacks"]:
            table = _attack_table(summary, partition, attack)
            if table:
                parts.append(f"**{attack}** ({partition})\n\n{table}")
    return "\n\n".join(parts) + "\n"


def _no_attack(summary: dict[str, Any]) -> str:
    cost = summary["no_attack_cost"]
    lines = [
        f"**No attack**: each defense against {cost['reference']}",
        "",
        "| partition | defense | test ppl | + ppl points | x server s |",
        "|---|---|---|---|---|",
    ]
    for partition, rows in cost.items():
        if partition == "reference":
            continue
        for defense, row in rows.items():
            lines.append(
                f"| {partition} | {defense} | {_fmt(row['test_ppl'], '{:.2f}')} | "
                f"{_fmt(row['ppl_points'], '{:+.2f}')} | "
                f"{_fmt(row['aggregate_s_ratio'], '{:.1f}')} |"
            )
    return "\n".join(lines)


def _attack_table(summary: dict[str, Any], partition: str, attack: str) -> str:
    cells = {
        (c["defense"], c["attack"], c["fraction"]): c["metrics"]
        for c in summary["cells"]
        if c["partition"] == partition
    }
    fractions = [f for f in summary["axes"]["fractions"] if f > 0]
    columns = [(CLEAN, 0.0)] + [(attack, f) for f in fractions]
    present = {m for (_, a, _), metrics in cells.items() if a == attack for m in metrics}
    if not present:
        return ""
    shown = [(key, label, form) for key, label, form in SHOWN if key in present]
    order = " / ".join(label for _, label, _ in shown)
    header = ["defense"] + [f"{'no attack' if a == CLEAN else f'{f:.0%}'}" for a, f in columns]
    lines = [
        f"each cell: {order}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for defense in summary["axes"]["defenses"]:
        row = [defense]
        for a, f in columns:
            metrics = cells.get((defense, a, f), {})
            row.append(" / ".join(_fmt(metrics.get(k, math.nan), form) for k, _, form in shown))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _fmt(value: float, form: str) -> str:
    return "-" if value is None or math.isnan(value) else form.format(value)
