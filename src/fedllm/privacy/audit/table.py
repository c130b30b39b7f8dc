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


def canary_table(canaries: list[dict[str, Any]], title: str) -> Table:
    """One row per canary and control: client, copies, rank, exposure, extraction."""
    table = Table(title=escape(title))
    for name, justify in (
        ("canary", "left"),
        ("client", "left"),
        ("copies", "right"),
        ("secret", "left"),
        ("rank", "right"),
        ("exposure", "right"),
        ("extrapolated", "right"),
        ("greedy completion", "left"),
        ("extracted", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in canaries:
        rank = f"{c['rank']:.0f}" if c["exact"] else f"~{c['rank']:.3g}"
        extra = c["extrapolated_exposure"]
        table.add_row(
            escape(c["id"]),
            escape(c["client"] or "(none: control)"),
            str(c["repeats"]),
            c["secret"],
            f"{rank} / {c['space']}",
            f"{c['exposure']:.2f} / {c['max_exposure']:.2f}",
            "-" if extra is None else f"{extra:.2f}",
            escape(repr(c["extraction"]["completion"])),
            "yes" if c["extraction"]["reproduced"] else "no",
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
        table.add_column(f"{attack} TPR", justify="right")
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
