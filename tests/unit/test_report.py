"""`fedllm report`'s tables and plots: 80 columns, whole numbers, the series as drawn."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType

from fedllm.report.compare import comparison_table, plot_comparison
from fedllm.report.plots import NOTHING_SENT, plot_run
from fedllm.report.progress import RichReporter, result_table, run_title


def record(round_num: int, *, sent: bool = True) -> dict[str, Any]:
    """A round of a large run: 100 clients sampled, perplexities in the tens of thousands."""
    clients = [f"client-{i:03d}" for i in range(100)] if round_num else []
    return {
        "round": round_num,
        "sampled": clients,
        "accepted": clients[3:],
        "train_loss": 10.812345 - round_num if round_num else None,
        "eval": {
            "clients_ppl_mean": 49794.123 - round_num,
            "clients_ppl_worst": 123456.789,
            "test_ppl": 49652.376,
        },
        "bytes_up": 1_234_567_890 * round_num if sent else 0,
        "bytes_down": 987_654_321 * round_num if sent else 0,
        "tokens_per_s": 123456.7 if round_num else None,
        "time_s": {"round": 1234.5} if round_num else {"setup": 2.0, "eval": 3.5},
    }


RECORDS = [record(n) for n in range(4)]
SUMMARY = {
    "run_dir": "runs/fedprox-dirichlet-0.1-r8",
    "mode": "federated",
    "method": "lora",
    "initial": {"clients_ppl_mean": 49794.123},
    "final": {"clients_ppl_mean": 49791.123, "clients_ppl_worst": 123456.789, "test_ppl": 1.5},
    "bytes_up": 7_407_407_340,
    "bytes_down": 5_925_925_926,
    "wall_s": 3725.0,
}


def render(renderable: RenderableType) -> str:
    file = StringIO()
    Console(width=80, file=file).print(renderable)
    return file.getvalue()


def assert_fits(text: str, *numbers: str) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for number in numbers:
        assert number in text


def test_result_tables_fit_80_columns_with_every_number_whole() -> None:
    text = render(result_table(RECORDS, title=run_title("fedprox-dirichlet-0.1-r8", SUMMARY)))
    assert "fedprox-dirichlet-0.1-r8 · federated · lora" in text
    assert_fits(text, "97/100", "9.812", "49794.12", "49791.12", "123456.79", "49652.38")
    assert_fits(text, "3703.70", "2962.96", "123457", "1234.5", "5.5")


def test_comparison_table_fits_80_columns_and_names_each_run() -> None:
    runs = {"fedprox-dirichlet-0.1-r8": SUMMARY, "alone": {**SUMMARY, "mode": "local"}}
    text = render(comparison_table(runs))
    assert_fits(text, "49794.12", "49791.12", "123456.79", "1.50", "7407.41", "3725")
    run_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert "fedprox-dirichlet-0.1-r8federated ·lora" in run_column  # a long name folds whole
    assert "alonelocal · lora" in run_column


def test_the_end_of_a_run_fits_80_columns() -> None:
    file = StringIO()
    RichReporter(Console(width=80, file=file)).finish(RECORDS, SUMMARY)
    assert_fits(file.getvalue(), "fedprox-dirichlet-0.1-r8 · federated · lora", "123456.79")


def test_run_names_are_printed_as_written_not_as_markup() -> None:
    text = render(result_table(RECORDS[:1], title=run_title("exp[red]", {"mode": "local"})))
    assert "exp[red] · local" in text


def test_plots_draw_the_records_on_whole_round_ticks(tmp_path: Path) -> None:
    perplexity, train_loss, communication = plot_run(RECORDS, tmp_path, title="run")
    assert [plot.path for plot in (perplexity, train_loss, communication)] == [
        tmp_path / name for name in ("perplexity.png", "train_loss.png", "communication.png")
    ]
    assert all(plot.path is not None and plot.path.is_file() for plot in (perplexity, train_loss))
    rounds = [r["round"] for r in RECORDS]
    assert perplexity.series == {
        "clients (mean)": [(r["round"], r["eval"]["clients_ppl_mean"]) for r in RECORDS],
        "worst client": [(n, 123456.789) for n in rounds],
        "global test split": [(n, 49652.376) for n in rounds],
    }
    assert train_loss.series == {"train loss": [(n, 10.812345 - n) for n in rounds[1:]]}
    up, down = communication.series["up"], communication.series["down"]
    sent = RECORDS[1:]
    assert [(round(x + 0.2), y) for x, y in up] == [(r["round"], r["bytes_up"] / 1e6) for r in sent]
    assert [(round(x - 0.2), y) for x, y in down] == [
        (r["round"], r["bytes_down"] / 1e6) for r in sent
    ]
    for plot in (perplexity, train_loss, communication):  # no 0.25 or 1.5 rounds
        assert plot.xticks and all(tick == int(tick) for tick in plot.xticks)


def test_a_run_that_sent_nothing_has_no_communication_plot(tmp_path: Path) -> None:
    local = [record(n, sent=False) for n in range(3)]
    del local[1]["bytes_up"], local[1]["bytes_down"]  # missing counts as nothing sent
    *drawn, communication = plot_run(local, tmp_path, title="alone")
    assert len(drawn) == 2
    assert communication.path is None and communication.note == NOTHING_SENT
    assert not (tmp_path / "communication.png").exists()


def test_comparison_plot_draws_each_run_on_whole_round_ticks(tmp_path: Path) -> None:
    short = [record(n) for n in range(2)]
    plot = plot_comparison({"a": RECORDS, "b": short}, tmp_path / "comparison.png")
    assert plot.path is not None and plot.path.is_file()
    assert plot.series == {
        "a": [(r["round"], r["eval"]["clients_ppl_mean"]) for r in RECORDS],
        "b": [(r["round"], r["eval"]["clients_ppl_mean"]) for r in short],
    }
    assert plot.xticks and all(tick == int(tick) for tick in plot.xticks)


def test_live_messages_print_brackets_as_written() -> None:
    from fedllm.types import RoundRecord

    out = StringIO()
    reporter = RichReporter(Console(file=out, width=200))
    reporter.start(1, 1, "fedllm · models/[tiny] + lora")
    reporter.round_done(RoundRecord(round=1, skipped="client [red]a[/red] dropped"))
    reporter.message("valid keys in [server]: rounds")
    reporter.warn("skipped checkpoint [round-00002]")
    reporter.progress.stop()
    text = out.getvalue()
    assert "models/[tiny]" in text
    assert "round 1: client [red]a[/red] dropped" in text  # its own line, as written
    assert "valid keys in [server]: rounds" in text
    assert "warning: skipped checkpoint [round-00002]" in text


def test_a_private_run_shows_its_mechanism_epsilon_and_a_plot_of_it(tmp_path: Path) -> None:
    """Two runs under central and local DP were both titled 'federated · lora' with no
    epsilon anywhere (issue 26)."""
    records = [{**r, "epsilon": [0.0, 1.25, 2.5, 3.75][r["round"]]} for r in RECORDS]
    about = {**SUMMARY, "privacy": {"epsilon": 3.75, "level": "record"}}
    title = run_title("dp-run", about)
    assert title == "dp-run · federated · lora · record-level DP, epsilon 3.75"
    text = render(result_table(records, title=title))
    assert_fits(text, "epsilon", "3.750", "1.250")
    plots = plot_run(records, tmp_path, title="dp-run")
    spent = next(p for p in plots if p.path is not None and p.path.name == "epsilon.png")
    assert spent.series["epsilon"] == [(0.0, 0.0), (1.0, 1.25), (2.0, 2.5), (3.0, 3.75)]
    assert "epsilon" not in render(result_table(RECORDS, title="plain"))
    moving = [{**r, "estimates": {"clip.max_norm": 0.1 * (r["round"] + 1)}} for r in RECORDS]
    clip = next(p for p in plot_run(moving, tmp_path, "c") if p.path and p.path.name == "clip.png")
    assert [y for _, y in clip.series["clip norm"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_the_clients_bar_counts_clients_per_phase_not_replies() -> None:
    """SecAgg+'s four phases once showed 19/5 on the clients bar (issue 26)."""
    from fedllm.message import Dropped, Message

    reporter = RichReporter(Console(file=StringIO(), width=120))
    reporter.start(1, 1, "header")
    reporter.round_started(1, 5)
    task = reporter.progress.tasks[reporter._clients]
    for phase in range(1, 5):
        for client in "abcde":
            reply = Dropped("gone") if (phase, client) == (3, "e") else Message()
            if phase == 4 and client == "e":
                continue  # dropped: no reply in the last phase
            reporter.client_done(client, reply)
            assert task.completed <= 5
        label = "clients" if phase == 1 else f"phase {phase}"
        assert task.description == label
    assert task.completed == 4  # the four survivors answered phase 4
    assert "replied" in str(task.fields["info"])  # no 'loss nan' for a phase without one
    reporter.progress.stop()


def test_skipped_rounds_and_budget_stops_are_marked_everywhere(tmp_path: Path) -> None:
    """An aborted SecAgg round showed as '3/5' in the table, not at all in the final
    line, and its reason was cut off the live line (issue 26)."""
    from fedllm.types import RoundRecord

    out = StringIO()
    reporter = RichReporter(Console(file=out, width=80))
    reporter.start(1, 2, "header")
    aborted = "secure aggregation aborted: 2 of 5 survived (threshold 3); global model unchanged"
    reporter.round_done(RoundRecord(round=1, skipped=aborted, extra={"epsilon": 3.9012}))
    stop = RoundRecord(round=2, extra={"epsilon": 5.5, "stopped": "privacy: budget spent"})
    reporter.round_done(stop)
    skipped = [{**r, "skipped": aborted if r["round"] == 2 else None} for r in RECORDS]
    summary = {**SUMMARY, "skipped_rounds": [2], "privacy": {"epsilon": 5.5, "delta": 1e-5}}
    reporter.finish(skipped, summary)
    text = out.getvalue()
    assert f"round 1: {aborted}" in text.replace("\n", " ").replace("  ", " ")
    assert "round 2: privacy: budget spent" in text
    assert "97/100 skip" in text and "1 round(s) skipped (2)" in text
    assert "epsilon 3.9" in text
    drawn = plot_run(skipped, tmp_path, title="run")[0]
    assert drawn.series["skipped"] == [(2.0, 49792.123)]


def test_the_bar_labels_stay_whole_in_a_narrow_terminal() -> None:
    from fedllm.types import RoundRecord

    out = StringIO()
    reporter = RichReporter(Console(file=out, width=60))
    reporter.start(1, 1, "header")
    reporter.round_started(1, 5)
    record = RoundRecord(round=1, train_loss=2.345, extra={"epsilon": 3.9012})
    record.extra["tokens_per_s"] = 12345.0
    reporter.round_done(record)
    reporter.progress.stop()
    text = out.getvalue()
    assert "rounds" in text and "clients" in text and "…" not in text.split("header")[1]
