"""Several runs side by side: a table of results and one perplexity plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from fedllm.report.plots import Plot, save_rounds_figure
from fedllm.report.progress import fmt, number_columns, run_title


def comparison_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One row per run (name -> summary.json): initial and final held-out perplexity, MB up
    and seconds; mode and method under the run's name, so that it fits 80 columns."""
    table = Table(title="fedllm runs compared")
    table.add_column("run", overflow="fold")
    number_columns(table, "ppl\nround 0", "ppl final\n(mean)", "ppl final\n(worst)")
    number_columns(table, "test ppl\nfinal", "MB up", "s")
    for name, summary in runs.items():
        initial, final = summary.get("initial", {}), summary.get("final", {})
        table.add_row(
            run_title(name, summary, sep="\n"),
            fmt(initial.get("clients_ppl_mean")),
            fmt(final.get("clients_ppl_mean")),
            fmt(final.get("clients_ppl_worst")),
            fmt(final.get("test_ppl")),
            f"{summary.get('bytes_up', 0) / 1e6:.2f}",
            f"{summary.get('wall_s', 0.0):.0f}",
        )
    return table


def plot_comparison(records: dict[str, list[dict[str, Any]]], path: Path) -> Plot:
    """Client-mean held-out perplexity by round, one line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in records.items():
        points = [(r["round"], r["eval"]["clients_ppl_mean"]) for r in recs if r.get("eval")]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set(xlabel="round", ylabel="held-out perplexity (client mean)", title="runs compared")
    ax.legend()
    return save_rounds_figure(fig, ax, path)
