"""Plots of a run's metrics (PNG files), for `fedllm report`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

NOTHING_SENT = "nothing was sent: no communication plot"


@dataclass(frozen=True)
class Plot:
    """One figure as drawn: its file (``None`` when skipped, ``note`` says why),
    each series as (x, y) points read back from the axes, and the round ticks."""

    path: Path | None
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    xticks: list[float] = field(default_factory=list)
    note: str = ""


def plot_run(records: list[dict[str, Any]], out_dir: Path, title: str) -> list[Plot]:
    """Write ``perplexity.png`` (held-out, by round), ``train_loss.png``, ``epsilon.png``
    (the privacy spent, when the run accounts it), ``clip.png`` (an adaptive clip's norm)
    and ``communication.png`` (MB per round; skipped when nothing was sent) into
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluated = [r for r in records if r.get("eval")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("clients_ppl_mean", "clients (mean)"),
        ("clients_ppl_worst", "worst client"),
        ("test_ppl", "global test split"),
    ):
        points = [(r["round"], r["eval"][key]) for r in evaluated if key in r["eval"]]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    skipped = [
        (r["round"], r["eval"]["clients_ppl_mean"])
        for r in evaluated
        if r.get("skipped") and "clients_ppl_mean" in r["eval"]
    ]
    if skipped:  # an aborted or skipped round left the model as it was: say which
        ax.plot(*zip(*skipped, strict=True), "x", color="red", markersize=10, label="skipped")
    ax.set(xlabel="round", ylabel="held-out perplexity", title=title)
    ax.legend()
    plots = [save_rounds_figure(fig, ax, out_dir / "perplexity.png")]

    trained = [r for r in records if r.get("train_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds, losses = [r["round"] for r in trained], [r["train_loss"] for r in trained]
    ax.plot(rounds, losses, marker="o", label="train loss")
    ax.set(xlabel="round", ylabel="mean client train loss (nats/token)", title=title)
    plots.append(save_rounds_figure(fig, ax, out_dir / "train_loss.png"))

    spent = [(r["round"], r["epsilon"]) for r in records if "epsilon" in r]
    if spent:  # a privacy ledger ran: the budget it spent, round by round
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*spent, strict=True), marker="o", label="epsilon")
        ax.set(xlabel="round", ylabel="epsilon spent (at the run's delta)", title=title)
        plots.append(save_rounds_figure(fig, ax, out_dir / "epsilon.png"))

    clip = [
        (r["round"], r["estimates"]["clip.max_norm"])
        for r in records
        if "clip.max_norm" in r.get("estimates", {})
    ]
    if clip:  # adaptive clipping: the norm the next round clips to
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*clip, strict=True), marker="o", label="clip norm")
        ax.set(xlabel="round", ylabel="clip norm after the round (adaptive)", title=title)
        plots.append(save_rounds_figure(fig, ax, out_dir / "clip.png"))

    sent = [r for r in records if r.get("bytes_up", 0) or r.get("bytes_down", 0)]
    if not sent:  # local mode: an empty chart would only mislead
        return [*plots, Plot(path=None, note=NOTHING_SENT)]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in sent]
    for offset, key, label in ((-0.2, "bytes_up", "up"), (0.2, "bytes_down", "down")):
        heights = [r.get(key, 0) / 1e6 for r in sent]
        ax.bar([x + offset for x in xs], heights, 0.4, label=label)
    ax.margins(y=0.25)  # headroom: the legend sits above the tallest bar
    ax.legend(loc="upper center", ncols=2)
    ax.set(xlabel="round", ylabel="MB per round", title=title)
    plots.append(save_rounds_figure(fig, ax, out_dir / "communication.png", grid=False))
    return plots


def save_rounds_figure(fig: Any, ax: Any, path: Path, grid: bool = True) -> Plot:
    """Ticks at whole rounds, then write ``fig`` and return what it shows."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if grid:
        ax.grid(alpha=0.3)
    series = {
        str(line.get_label()): [(float(x), float(y)) for x, y in line.get_xydata()]
        for line in ax.get_lines()
    }
    for bars in ax.containers:
        series[str(bars.get_label())] = [
            (p.get_x() + p.get_width() / 2, p.get_height()) for p in bars.patches
        ]
    save_figure(fig, path)
    low, high = sorted(ax.get_xlim())
    xticks = [float(t) for t in ax.get_xticks() if low <= t <= high]
    return Plot(path=path, series=series, xticks=xticks)


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
