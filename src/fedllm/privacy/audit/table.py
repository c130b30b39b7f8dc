"""The audit's result as rich tables (and its progress bars)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedllm.privacy.audit.score import Tick

COMPLETION_CHARS = 20
"""Most characters of a greedy completion shown in the table (audit.json has it whole)."""


def canary_table(canaries: list[dict[str, Any]], title: str) -> Table:
    """One row per canary and control: client, copies, rank, exposure, extraction."""
    table = Table(title=escape(title))
    table.add_column("canary")
    table.add_column("client")
    table.add_column("copies", justify="right")
    table.add_column("secret")
    table.add_column("rank", justify="right")
    table.add_column("exposure (fit)", justify="right")
    table.add_column("greedy completion")
    for c in canaries:
        rank = f"{c['rank']:.0f}" if c["exact"] else f"~{c['rank']:.3g}"
        fit = c["extrapolated_exposure"]
        exposure = f"{c['exposure']:.2f}/{c['max_exposure']:.1f}"
        if fit is not None:
            exposure += f" ({fit:.2f})"
        extraction = c["extraction"]
        completion = extraction["completion"]
        shown = repr(
            completion[:COMPLETION_CHARS] + ("..." if len(completion) > COMPLETION_CHARS else "")
        )
        table.add_row(
            escape(c["id"]),
            escape(c["client"] or "-"),
            str(c["repeats"]),
            c["secret"],
            f"{rank}/{c['space']}",
            exposure,
            ("[bold red]secret[/] " if extraction["reproduced"] else "") + escape(shown),
        )
    return table


def membership_table(membership: dict[str, Any], title: str) -> Table:
    """One row per client (and all pooled): the two attacks' AUC and TPR at low FPR."""
    table = Table(title=escape(title))
    table.add_column("client")
    table.add_column("members", justify="right")
    table.add_column("held out", justify="right")
    for attack in ("loss", "reference"):
        table.add_column(f"{attack} AUC", justify="right")
        table.add_column(f"{attack} TPR@1%FPR", justify="right")
    rows = [*membership["clients"].items(), ("all", membership["all"])]
    for cid, row in rows:
        cells = [escape(cid), str(row["members"]), str(row["nonmembers"])]
        for attack in ("loss", "reference"):
            result = row[attack]
            cells += (
                ["-", "-"]
                if result is None
                else [
                    f"{result['auc']:.3f}",
                    f"{result['tpr_at_low_fpr']:.3f}",
                ]
            )
        table.add_row(*cells, end_section=cid == rows[-2][0] if len(rows) > 1 else False)
    return table


def rich_progress(console: Console) -> Any:
    """A :data:`~fedllm.privacy.audit.audit.Progress` drawing transient bars on ``console``."""

    @contextmanager
    def progress(description: str, total: int) -> Iterator[Tick]:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(escape(description), total=total)
            yield lambda n: bar.advance(task, n)

    return progress
