"""A federation's heterogeneity as rich tables and a clients x labels heat map (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from fedllm.data.heterogeneity import Heterogeneity
from fedllm.report.plots import save_figure

MAX_HEATMAP_LABELS = 40
"""Most label columns drawn; the rarer labels are summed into one "(other)" column."""

MAX_ANNOTATED_CELLS = 400
"""Heat maps with at most this many cells print each share in its cell."""


def heterogeneity_table(stats: Heterogeneity, title: str) -> Table:
    """One row per client: train/eval examples, top labels, token JSD (bits), label EMD."""
    table = Table(title=title)
    table.add_column("client", no_wrap=True)
    table.add_column("train", justify="right")
    table.add_column("eval", justify="right")
    table.add_column(f"top {stats.label_field or 'label'} (share)", overflow="fold", ratio=1)
    table.add_column("token JSD (bits)", justify="right")
    table.add_column("label EMD", justify="right")
    for c in stats.clients:
        top = ", ".join(f"{name} {share:.0%}" for name, share in c.top_labels(stats.labels))
        table.add_row(
            escape(c.client_id),
            str(c.train),
            str(c.eval),
            escape(top) or "-",
            f"{c.token_jsd:.4f}",
            "-" if c.label_emd is None else f"{c.label_emd:.3f}",
        )
    return table


def summary_table(stats: Heterogeneity) -> Table:
    """The summary figures of :meth:`Heterogeneity.summary`, one per row."""
    table = Table(title="summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in stats.summary().items():
        shown = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    return table


def plot_label_heatmap(stats: Heterogeneity, path: Path, title: str) -> Path:
    """Clients (rows) x labels (columns), coloured by each client's share of records.

    Labels are ordered most frequent first; past :data:`MAX_HEATMAP_LABELS`
    the rest are summed into an ``(other)`` column.
    """
    import matplotlib.pyplot as plt

    shares = stats.label_matrix()
    names = list(stats.labels)
    if len(names) > MAX_HEATMAP_LABELS:
        keep = MAX_HEATMAP_LABELS - 1
        shares = np.hstack([shares[:, :keep], shares[:, keep:].sum(axis=1, keepdims=True)])
        names = [*names[:keep], "(other)"]
    rows = [c.client_id for c in stats.clients]
    width = min(max(6.0, 2.5 + 0.45 * len(names)), 24.0)
    height = min(max(4.0, 3.0 + 0.3 * len(rows)), 24.0)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(shares, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    if shares.size <= MAX_ANNOTATED_CELLS:
        for (i, j), share in np.ndenumerate(shares):
            colour = "black" if share > 0.6 else "white"
            ax.text(j, i, f"{share:.0%}", ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(len(names)), labels=names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=7)
    ax.set(xlabel=stats.label_field or "label", ylabel="client", title=title)
    fig.colorbar(image, ax=ax, label="share of the client's records")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
