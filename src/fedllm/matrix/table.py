"""The matrix on the terminal: progress over its cells, and the no-attack cost table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedllm.matrix.run import Progress as Tell
from fedllm.report.progress import fmt, number_columns


@contextmanager
def matrix_progress(console: Console, quiet: bool) -> Iterator[Tell]:
    """A callback for :func:`fedllm.matrix.run.run_matrix` showing a bar over the steps
    (nothing when ``quiet``)."""
    if quiet:
        yield lambda what, done, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("matrix", total=None)

        def tell(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield tell


def no_attack_table(summary: dict[str, Any]) -> Table:
    """Each defense's clean test perplexity and its cost against the reference defense
    (``matrix.json``'s ``no_attack_cost``), one row per partition and defense."""
    cost = summary["no_attack_cost"]
    table = Table(title=f"no attack: each defense against {cost['reference']}")
    table.add_column("partition")
    table.add_column("defense")
    number_columns(table, "test ppl", "+ ppl points", "x server s")
    for partition, rows in cost.items():
        if partition == "reference":
            continue
        for defense, row in rows.items():
            table.add_row(
                partition,
                defense,
                fmt(row["test_ppl"]),
                fmt(row["ppl_points"]),
                fmt(row["aggregate_s_ratio"]),
            )
    return table
