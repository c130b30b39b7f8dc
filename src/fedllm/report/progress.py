"""Live progress while a run trains, and the result tables at the end."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

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
    def warn(self, text: str) -> None:
        """Something the user must know (a skipped checkpoint): shown even when quiet."""
        warnings.warn(text, stacklevel=2)

    def finish(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None: ...


SilentReporter = Reporter


class QuietReporter(Reporter):
    """No progress; warnings still reach the console (``--quiet``)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def warn(self, text: str) -> None:
        self.console.print(
            f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True
        )


class RichReporter(Reporter):
    """A bar over rounds and one over the clients of the current round, with live loss."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            # labels stay whole in a narrow terminal ('roun…' once); the info text folds
            TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=7)),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=self.console,
        )
        self._rounds = self.progress.add_task("rounds ", total=1, info="", visible=False)
        self._clients = self.progress.add_task("clients", total=1, info="", visible=False)
        self._replies: dict[ClientId, int] = {}  # this round's replies per client

    def start(self, first_round: int, rounds: int, header: str) -> None:
        self.console.print(header, markup=False, highlight=False)
        self.progress.update(self._rounds, total=rounds, completed=first_round - 1, visible=True)
        self.progress.start()

    def round_started(self, round_num: int, cohort_size: int) -> None:
        self._replies = {}
        self.progress.update(
            self._clients,
            description="clients",
            total=cohort_size,
            completed=0,
            visible=True,
            info="",
        )

    def client_done(self, client_id: ClientId, reply: Reply) -> None:
        """Count clients, not replies: a protocol of several phases (SecAgg+'s four, CKKS's
        two) gets a reply from each client per phase; the bar shows the current phase's."""
        self._replies[client_id] = self._replies.get(client_id, 0) + 1
        phase = max(self._replies.values())
        done = sum(1 for n in self._replies.values() if n == phase)
        if isinstance(reply, Dropped):
            info = f"{client_id}: dropped"
        elif "train_loss" in reply.metrics:
            info = f"{client_id}: loss {reply.metrics['train_loss']:.3f}"
        else:  # a phase without training, or a loss kept by a privacy mechanism
            info = f"{client_id}: replied"
        label = "clients" if phase == 1 else f"phase {phase}"
        self.progress.update(self._clients, description=label, completed=done, info=info)

    def round_done(self, record: RoundRecord) -> None:
        parts = [f"round {record.round}"]
        if "epsilon" in record.extra:  # first: a narrow terminal cuts the line's end
            parts.append(f"epsilon {record.extra['epsilon']:.3g}")
        if record.train_loss is not None:
            parts.append(f"train loss {record.train_loss:.3f}")
        if "clients_ppl_mean" in record.eval:
            parts.append(f"eval ppl {record.eval['clients_ppl_mean']:.2f}")
        if "tokens_per_s" in record.extra:
            parts.append(f"{record.extra['tokens_per_s']:,.0f} tok/s")
        if "mfu" in record.extra:
            parts.append(f"MFU {100 * record.extra['mfu']:.1f}%")
        if record.rejected:
            parts.append(f"{len(record.rejected)} rejected")
        self.progress.update(self._rounds, advance=1, info=" · ".join(parts))
        if not self.console.is_terminal:  # logs and CI: no live display, one line per round
            self.console.print(" · ".join(parts), markup=False, highlight=False)
        # an aborted or skipped round and a budget stop get a line of their own, whole
        for event in (record.skipped, record.extra.get("stopped")):
            if event:
                self.progress.console.print(
                    f"round {record.round}: {event}", markup=False, highlight=False, soft_wrap=True
                )

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.progress.console.print(
            f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True
        )

    def finish(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        self.progress.stop()
        self.console.print(result_table(records, run_title(Path(summary["run_dir"]).name, summary)))
        self.console.print(
            f"[bold]{summary['mode']}[/bold] run finished: held-out perplexity "
            f"{fmt(summary.get('initial', {}).get('clients_ppl_mean'))} -> "
            f"{fmt(summary.get('final', {}).get('clients_ppl_mean'))} (client mean), "
            f"{fmt(summary.get('final', {}).get('test_ppl'))} on the test split; "
            f"{summary['bytes_up'] / 1e6:.2f} MB up, {summary['bytes_down'] / 1e6:.2f} MB down; "
            f"{_privacy(summary)}{_skipped(summary)}{summary['wall_s']:.0f} s. "
            f"Results in {escape(str(summary['run_dir']))}"
        )


def _skipped(summary: dict[str, Any]) -> str:
    """``N round(s) skipped (R, ...); `` when some round left the model unchanged."""
    skipped = summary.get("skipped_rounds") or []
    if not skipped:
        return ""
    return f"{len(skipped)} round(s) skipped ({', '.join(map(str, skipped))}); "


def _privacy(summary: dict[str, Any]) -> str:
    """``epsilon E at delta D; `` for a run with a privacy ledger, else nothing."""
    ledger = summary.get("privacy")
    if not ledger:
        return ""
    return f"epsilon {ledger['epsilon']:.3g} at delta {ledger['delta']:g}; "


def result_table(records: list[dict[str, Any]], title: str = "fedllm run") -> Group:
    """Per round, two tables that fit 80 columns: held-out quality (clients accepted of
    sampled, train loss, perplexities), then cost (MB up and down, tokens/s, seconds,
    and the epsilon spent so far when the run accounts privacy)."""
    quality = Table(title=title)
    cost = Table(title=f"{title}: cost")
    private = any("epsilon" in rec for rec in records)
    number_columns(quality, "round", "clients", "train loss", "eval ppl (mean)")
    number_columns(quality, "eval ppl (worst)", "test ppl")
    number_columns(
        cost, "round", "MB up", "MB down", "tok/s", "s", *(["epsilon"] if private else [])
    )
    for rec in records:
        ev = rec.get("eval", {})
        clients = f"{len(rec.get('accepted', []))}/{len(rec.get('sampled', []))}"
        quality.add_row(
            str(rec["round"]),
            clients + (" skip" if rec.get("skipped") else ""),
            fmt(rec.get("train_loss"), 3),
            fmt(ev.get("clients_ppl_mean")),
            fmt(ev.get("clients_ppl_worst")),
            fmt(ev.get("test_ppl")),
        )
        cost.add_row(
            str(rec["round"]),
            f"{rec.get('bytes_up', 0) / 1e6:.2f}",
            f"{rec.get('bytes_down', 0) / 1e6:.2f}",
            fmt(rec.get("tokens_per_s"), 0),
            f"{_seconds(rec.get('time_s', {})):.1f}",
            *([fmt(rec.get("epsilon"), 3)] if private else []),
        )
    return Group(quality, cost)


def number_columns(table: Table, *headers: str) -> None:
    """Right-aligned columns whose cells fold onto a second line rather than lose digits
    when the console is narrow (rich would cut them to ``4979…``)."""
    for header in headers:
        table.add_column(header, justify="right", overflow="fold")


def run_title(name: str, about: dict[str, Any], sep: str = " · ") -> str:
    """``name · mode · method`` (what summary.json or the config says), and its privacy
    (``user-level DP, epsilon 10.7``) when it had any, markup-escaped."""
    facts = [str(about[k]) for k in ("mode", "method") if k in about]
    privacy = about.get("privacy") or {}
    if "epsilon" in privacy:
        facts.append(f"{privacy.get('level', 'user')}-level DP, epsilon {privacy['epsilon']:.3g}")
    return escape(sep.join(part for part in (name, " · ".join(facts)) if part))


def _seconds(times: dict[str, float]) -> float:
    """A round's wall time: its ``round`` total, or the sum of phases (round 0); keys
    with a ``/`` (``transport/train``) are parts of those phases, not added again."""
    return times.get("round", sum(v for k, v in times.items() if "/" not in k))


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell, ``-`` when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
