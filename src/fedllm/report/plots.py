"""Plots of a run's metrics (PNG files), for `fedllm report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_run(records: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """Write ``perplexity.png`` (held-out, by round), ``train_loss.png`` and
    ``communication.png`` (MB per round) into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
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
    ax.set(xlabel="round", ylabel="held-out perplexity", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(save_figure(fig, out_dir / "perplexity.png"))

    trained = [r for r in records if r.get("train_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if trained:
        ax.plot([r["round"] for r in trained], [r["train_loss"] for r in trained], marker="o")
    ax.set(xlabel="round", ylabel="mean client train loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    written.append(save_figure(fig, out_dir / "train_loss.png"))

    rounds = [r for r in records if r["round"] > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    if rounds:
        xs = [r["round"] for r in rounds]
        ax.bar([x - 0.2 for x in xs], [r["bytes_up"] / 1e6 for r in rounds], 0.4, label="up")
        ax.bar([x + 0.2 for x in xs], [r["bytes_down"] / 1e6 for r in rounds], 0.4, label="down")
        ax.legend()
    ax.set(xlabel="round", ylabel="MB per round", title=title)
    written.append(save_figure(fig, out_dir / "communication.png"))
    return written


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
