"""Whole runs with injected dropouts: recorded, tolerated down to min_clients, seeded."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fedllm.federation.runner import resume, run
from tests.support.runs import InterruptAfter, stable, tiny_config


def test_dropped_clients_are_recorded_and_the_round_goes_on(tmp_path: Path) -> None:
    whole = run(tiny_config("server.clients_per_round=3"), tmp_path / "whole")
    first = whole.records[1]["sampled"]
    trace = f'server.dropout_trace={{"1" = ["{first[0]}"]}}'
    result = run(tiny_config("server.clients_per_round=3", trace), tmp_path / "drop")
    one = result.records[1]
    assert one["sampled"] == first  # sampling does not know who will drop
    assert one["dropped"] == [
        {"client": first[0], "reason": "dropped by the dropout trace in round 1"}
    ]
    assert one["accepted"] == first[1:] and one["skipped"] is None
    assert first[0] not in one["client_metrics"]
    # a dropped client sends nothing: fewer bytes up, the same bytes down
    assert one["bytes_up"] < whole.records[1]["bytes_up"]
    assert one["bytes_down"] == whole.records[1]["bytes_down"]
    assert "dropped" not in result.records[2]


def test_too_few_answers_skip_the_round(tmp_path: Path) -> None:
    whole = run(tiny_config("server.rounds=1"), tmp_path / "whole")
    sampled = whole.records[1]["sampled"]
    trace = f'server.dropout_trace={{"1" = ["{sampled[0]}"]}}'
    result = run(tiny_config("server.rounds=1", "server.min_clients=2", trace), tmp_path / "d")
    assert (
        result.records[1]["skipped"] is not None
        and "min_clients = 2" in result.records[1]["skipped"]
    )


def test_seeded_dropouts_resume_exactly(tmp_path: Path) -> None:
    cfg = (
        "server.dropout=0.4",
        "server.rounds=4",
        "server.clients_per_round=3",
        "run.checkpoint_every=1",
    )
    whole = run(tiny_config(*cfg), tmp_path / "whole")
    assert any("dropped" in r for r in whole.records[1:]), "the seed should drop someone"
    with contextlib.suppress(KeyboardInterrupt):
        run(tiny_config(*cfg), tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
