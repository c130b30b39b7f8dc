"""``fedllm attack``'s results as rich tables, and its progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedllm.security.evasion.attack import Progress as ProgressFactory
from fedllm.security.evasion.attack import Tick

SHOWN_CHARS = 24
"""Most characters of a prompt or suffix shown (attack.json has them whole)."""


def pgd_table(report: dict[str, Any], title: str) -> Table:
    """One row per budget: clean and attacked loss of the reference responses."""
    table = Table(title=escape(f"{title} · PGD, {report['norm']}, {report['scale']} eps"))
    for column in ("eps", "clean loss", "attacked loss", "increase"):
        table.add_column(column, justify="right")
    for row in report["results"]:
        table.add_row(
            f"{row['eps']:g}",
            f"{row['clean_loss']:.4f}",
            f"{row['attacked_loss']:.4f}",
            f"{row['increase']:+.4f}",
        )
    return table


def suffix_table(report: dict[str, Any], title: str) -> Table:
    """One row per prompt: the suffix found, the target's loss before and after."""
    rate = report["success_rate"]
    table = Table(
        title=escape(
            f"{title} · {report['suffix_tokens']}-token suffix for {report['target']!r}: "
            f"success {rate:.0%}"
        )
    )
    table.add_column("prompt")
    table.add_column("suffix")
    table.add_column("loss before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("success")
    for row in report["per_prompt"]:
        table.add_row(
            escape(_short(row["prompt"])),
            escape(_short(row["suffix_text"])),
            f"{row['start_loss']:.3f}",
            f"{row['loss']:.3f}",
            str(row["steps"]),
            "[bold red]yes[/]" if row["success"] else "no",
        )
    return table


def _short(text: str) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= SHOWN_CHARS else "..." + text[-SHOWN_CHARS:])


def rich_progress(console: Console) -> ProgressFactory:
    """A progress factory drawing one rich bar per stage on ``console``."""

    @contextmanager
    def bar(description: str, total: int) -> Iterator[Tick]:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(escape(description), total=total)
            yield lambda n: progress.advance(task, n)

    return bar
