"""Live progress while a run trains, and the result table at the end."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedllm.message import Dropped, Reply
from fedllm.types import ClientId, RoundRecord


class Reporter:
    """Receives the run's events; this base reports nothing (tests, library use).

    Subclasses override the events they show.
    """

    def start(self, first_round: int, rounds: int, header: str) -> None: ...
    def round_started(self, round_num: int, cohort_size: int) -> None: ...
    def client_done(self, client_id: ClientId, reply: Reply) -> None: ...
    def round_done(self, record: RoundRecord) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None: ...


SilentReporter = Reporter


class RichReporter(Reporter):
    """A bar over rounds and one over the clients of the current round, with live loss."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self._rounds = self.progress.add_task("rounds ", total=1, info="", visible=False)
        self._clients = self.progress.add_task("clients", total=1, info="", visible=False)

    def start(self, first_round: int, rounds: int, header: str) -> None:
        self.console.print(header)
        self.progress.update(self._rounds, total=rounds, completed=first_round - 1, visible=True)
        self.progress.start()

    def round_started(self, round_num: int, cohort_size: int) -> None:
        self.progress.update(self._clients, total=cohort_size, completed=0, visible=True, info="")

    def client_done(self, client_id: ClientId, reply: Reply) -> None:
        if isinstance(reply, Dropped):
            info = f"{client_id}: dropped"
        else:
            info = f"{client_id}: loss {reply.metrics.get('train_loss', math.nan):.3f}"
        self.progress.update(self._clients, advance=1, info=info)

    def round_done(self, record: RoundRecord) -> None:
        parts = [f"round {record.round}"]
        if record.train_loss is not None:
            parts.append(f"train loss {record.train_loss:.3f}")
        if "clients_ppl_mean" in record.eval:
            parts.append(f"eval ppl {record.eval['clients_ppl_mean']:.2f}")
        if "tokens_per_s" in record.extra:
            parts.append(f"{record.extra['tokens_per_s']:,.0f} tok/s")
        if "mfu" in record.extra:
            parts.append(f"MFU {100 * record.extra['mfu']:.1f}%")
        if record.skipped:
            parts.append(f"skipped: {record.skipped}")
        if record.rejected:
            parts.append(f"{len(record.rejected)} rejected")
        self.progress.update(self._rounds, advance=1, info=" · ".join(parts))
        if not self.console.is_terminal:  # logs and CI: no live display, one line per round
            self.console.print(" · ".join(parts))

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        self.progress.stop()
        self.console.print(result_table(records))
        self.console.print(
            f"[bold]{summary['mode']}[/bold] run finished: held-out perplexity "
            f"{fmt(summary.get('initial', {}).get('clients_ppl_mean'))} -> "
            f"{fmt(summary.get('final', {}).get('clients_ppl_mean'))} (client mean), "
            f"{fmt(summary.get('final', {}).get('test_ppl'))} on the test split; "
            f"{summary['bytes_up'] / 1e6:.2f} MB up, {summary['bytes_down'] / 1e6:.2f} MB down; "
            f"{summary['wall_s']:.0f} s. Results in {summary['run_dir']}"
        )


def result_table(records: list[dict[str, Any]]) -> Table:
    """One row per round: losses, perplexities, bytes, training tokens/s, seconds."""
    table = Table(title="fedllm run")
    for column in (
        "round",
        "clients",
        "train loss",
        "eval ppl (mean)",
        "eval ppl (worst)",
        "test ppl",
        "MB up",
        "tok/s",
        "s",
    ):
        table.add_column(column, justify="right")
    for rec in records:
        ev = rec.get("eval", {})
        table.add_row(
            str(rec["round"]),
            f"{len(rec.get('accepted', []))}/{len(rec.get('sampled', []))}",
            fmt(rec.get("train_loss"), 3),
            fmt(ev.get("clients_ppl_mean")),
            fmt(ev.get("clients_ppl_worst")),
            fmt(ev.get("test_ppl")),
            f"{rec.get('bytes_up', 0) / 1e6:.2f}",
            fmt(rec.get("tokens_per_s"), 0),
            f"{_seconds(rec.get('time_s', {})):.1f}",
        )
    return table


def _seconds(times: dict[str, float]) -> float:
    """A round's wall time: its ``round`` total, or the sum of phases (round 0)."""
    return times.get("round", sum(times.values()))


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell, ``-`` when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
