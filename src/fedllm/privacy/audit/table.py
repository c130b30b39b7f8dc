"""The audit's result as rich tables (and its progress bars)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedllm.privacy.audit.score import Tick

NAME_CHARS = 32
"""Client names up to this long stay whole on one line of the membership table."""

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
    """One row per client (and all pooled): the counts behind the numbers, each attack's
    AUC with its 95% interval's half-width, and its TPR at 1% FPR where the held-out
    count can resolve 1% (``n/a`` below 100 held-out records)."""
    rows = [*membership["clients"].items(), ("all", membership["all"])]
    longest = max(len(cid) for cid, _ in rows)
    table = Table(
        title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )  # no side rules, one space between columns: room for whole names
    table.add_column("client", min_width=min(longest, NAME_CHARS), overflow="fold")
    table.add_column("members", justify="right")
    table.add_column("held\nout", justify="right")
    for attack in ("loss", "ref."):
        table.add_column(f"{attack}\nAUC", justify="right")
        table.add_column(f"{attack}\nTPR@1%", justify="right")
    for cid, row in rows:
        cells = [escape(cid), str(row["members"]), str(row["nonmembers"])]
        for attack in ("loss", "reference"):
            result = row[attack]
            cells += ["-", "-"] if result is None else [_auc_cell(result), _tpr_cell(result)]
        table.add_row(*cells, end_section=cid == rows[-2][0] if len(rows) > 1 else False)
    table.caption = "AUC ± half its 95% interval; TPR at 1% FPR needs 100+ held out"
    return table


def _auc_cell(result: dict[str, Any]) -> str:
    low, high = result.get("auc_interval", (result["auc"], result["auc"]))
    return f"{result['auc']:.2f}±{(high - low) / 2:.2f}"


def _tpr_cell(result: dict[str, Any]) -> str:
    tpr = result["tpr_at_low_fpr"]
    return "n/a" if tpr is None else f"{tpr:.3f}"


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
