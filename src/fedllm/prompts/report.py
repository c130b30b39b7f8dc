"""The selection as rich tables: the ranking, and each candidate's loss on each client."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from fedllm.prompts.select import Selection


def selection_table(selection: Selection, title: str = "hard prompt selection") -> Table:
    """One row per candidate, best first: pooled loss, mean rank, origin, text.

    Losses are answer losses in nats/token; the last row is the chats with no
    instruction inserted (a reference, never selected).
    """
    ranked_by = {"mean": "loss", "rank": "mean rank"}[selection.aggregate]
    table = Table(title=f"{title} · ranked by {ranked_by}", caption=_caption(selection))
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("loss", justify="right")
    table.add_column("mean rank", justify="right")
    table.add_column("origin")
    table.add_column("instruction", overflow="fold", ratio=1)
    for ranked in selection.ranking:
        table.add_row(
            str(ranked.position),
            ranked.candidate.id,
            f"{ranked.loss:.3f}",
            f"{ranked.mean_rank:.2f}",
            ranked.candidate.origin,
            escape(ranked.candidate.text),
            style="bold green" if ranked.position == 1 else "",
        )
    base = f"{selection.baseline_loss():.3f}"
    table.add_row("", "(none)", base, "", "reference", "no instruction inserted", style="dim")
    return table


def client_table(selection: Selection) -> Table:
    """Each candidate's answer loss (nats/token) and rank on every client, best candidate first."""
    table = Table(title="answer loss per client (nats/token; rank on that client)")
    table.add_column("id")
    clients = list(selection.baseline)
    for client in clients:
        table.add_column(escape(client), justify="right")
    for ranked in selection.ranking:
        cells = [f"{ranked.per_client[c]:.3f} ({ranked.client_rank[c]:g})" for c in clients]
        table.add_row(ranked.candidate.id, *cells)
    table.add_row("(none)", *(f"{selection.baseline[c].loss:.3f}" for c in clients), style="dim")
    return table


def _caption(selection: Selection) -> str:
    up = sum(selection.bytes_up.values())
    per_client = up / max(1, len(selection.bytes_up))
    return (
        f"chosen: {selection.chosen.candidate.id} · loss: answer tokens of all clients "
        f"pooled, nats/token · {up:,} bytes of scores uploaded ({per_client:,.0f} per client)"
    )
