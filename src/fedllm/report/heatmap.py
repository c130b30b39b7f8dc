"""Heat maps of a run matrix (``matrix.json`` from ``fedllm matrix``): one PNG per metric
and data partition, defenses down, the clean column then each attack at each malicious
fraction across, every cell's value written in it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedllm.report.plots import save_figure

LABELS = {
    "test_ppl": "clean test perplexity",
    "clients_ppl_mean": "clean held-out perplexity (client mean)",
    "aggregate_s": "server seconds per round (aggregation)",
    "excluded": "updates excluded by the rule (all rounds)",
    "data_attack.asr": "backdoor attack success rate (after the last round)",
    "data_attack.false_trigger_rate": "backdoor replies without the trigger",
    "data_attack.success_rate": "targeted attack success rate",
    "data_attack.off_topic_rate": "targeted attack replies off topic",
    "data_attack.harmful_rate": "safety attack harmful rate",
    "data_attack.no_refusal_rate": "safety attack no-refusal rate",
    "screening.tpr": "screening true positive rate",
    "screening.fpr": "screening false positive rate",
    "screening.flagged": "updates screening flagged",
}
SKIPPED = {"wall_s", "rounds_applied"}
"""Metrics the matrix records but draws no map of."""

CLEAN = "none"


def matrix_columns(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """The heat map's columns: ``("none", 0.0)`` (the clean run), then each attack at each
    non-zero fraction, in the matrix file's order."""
    fractions = [f for f in summary["axes"]["fractions"] if f > 0]
    return [(CLEAN, 0.0)] + [(a, f) for a in summary["axes"]["attacks"] for f in fractions]


def matrix_grid(
    summary: dict[str, Any], metric: str, partition: str
) -> tuple[list[str], list[tuple[str, float]], list[list[float]]]:
    """Rows (defenses), columns (:func:`matrix_columns`) and the metric's value in each
    cell (NaN where the cell lacks it)."""
    found = {
        (c["defense"], c["attack"], c["fraction"]): c["metrics"].get(metric, math.nan)
        for c in summary["cells"]
        if c["partition"] == partition
    }
    rows = list(summary["axes"]["defenses"])
    columns = matrix_columns(summary)
    values = [[found.get((d, a, f), math.nan) for a, f in columns] for d in rows]
    return rows, columns, values


def plot_matrix(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """``heatmap_<metric>__<partition>.png`` for every metric any cell reports (but
    :data:`SKIPPED`); the paths written."""
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = sorted({m for c in summary["cells"] for m in c["metrics"]} - SKIPPED)
    written = []
    for partition in summary["axes"]["partitions"]:
        for metric in metrics:
            rows, columns, values = matrix_grid(summary, metric, partition)
            grid = np.array(values, dtype=float)
            if np.isnan(grid).all():
                continue
            fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(columns), 1.0 + 0.45 * len(rows)))
            ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
            shown = grid[np.isfinite(grid)]  # what imshow scales (inf is masked too)
            low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 0.0)
            for (i, j), value in np.ndenumerate(grid):
                text = "-" if math.isnan(value) else _short(value)
                shade = (value - low) / (high - low) if high > low else 0.0
                color = _ink(shade) if math.isfinite(value) else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7)
            ax.set_xticks(range(len(columns)))
            ax.set_xticklabels(
                ["no attack" if a == CLEAN else f"{a}\n{f:.0%}" for a, f in columns],
                fontsize=7,
                rotation=30,
                ha="right",
            )
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(rows, fontsize=8)
            ax.set_title(f"{LABELS.get(metric, metric)} ({partition})", fontsize=9)
            path = out_dir / f"heatmap_{metric}__{partition}.png"
            written.append(save_figure(fig, path))
    return written


def _ink(shade: float) -> str:
    """Text colour readable on a viridis cell of normalised ``shade`` (0 dark purple,
    1 bright yellow; the grid's linear min-max, as ``imshow`` scales it): black on the
    bright upper part, white below."""
    return "black" if shade > 0.55 else "white"


def _short(value: float) -> str:
    """A number in at most about five characters."""
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.1e}"
    return f"{value:.3g}"
