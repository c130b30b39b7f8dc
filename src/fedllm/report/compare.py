"""Several runs side by side: a table of results and one perplexity plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from fedllm.report.plots import save_figure
from fedllm.report.progress import fmt


def comparison_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One row per run (name -> summary.json): initial and final held-out perplexity."""
    table = Table(title="fedllm runs compared")
    table.add_column("run", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    for column in (
        "ppl round 0",
        "ppl final (mean)",
        "ppl final (worst)",
        "test ppl final",
        "MB up",
        "s",
    ):
        table.add_column(column, justify="right")
    for name, summary in runs.items():
        initial, final = summary.get("initial", {}), summary.get("final", {})
        table.add_row(
            name,
            str(summary.get("mode", "?")),
            fmt(initial.get("clients_ppl_mean")),
            fmt(final.get("clients_ppl_mean")),
            fmt(final.get("clients_ppl_worst")),
            fmt(final.get("test_ppl")),
            f"{summary.get('bytes_up', 0) / 1e6:.2f}",
            f"{summary.get('wall_s', 0.0):.0f}",
        )
    return table


def plot_comparison(records: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Client-mean held-out perplexity by round, one line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in records.items():
        points = [(r["round"], r["eval"]["clients_ppl_mean"]) for r in recs if r.get("eval")]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set(xlabel="round", ylabel="held-out perplexity (client mean)", title="runs compared")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
