"""A whole run with an availability trace: only online clients train, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.data import build_federated_data
from fedllm.federation.runner import resume, run
from fedllm.model.load import load_tokenizer
from tests.support.runs import InterruptAfter, stable, tiny_config


def test_trace_run_trains_only_online_clients_and_resumes_identically(tmp_path: Path) -> None:
    base = tiny_config()
    data = build_federated_data(base.data, load_tokenizer(base.model.name), base.seed)
    ids = list(data.clients)
    assert len(ids) == 4
    trace = {"1": ids[:3], "2": [ids[3]], "3": [], "4": [ids[3], ids[0]]}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    overrides = (
        'server.sampling="trace"',
        f"server.availability_file={json.dumps(str(path))}",
        "server.rounds=4",
        "run.checkpoint_every=2",
    )

    whole = run(tiny_config(*overrides), tmp_path / "whole")
    rounds = {r["round"]: r for r in whole.records if r["round"] > 0}
    for r, rec in rounds.items():
        online = sorted(trace[str(r)], key=ids.index)
        assert rec["online"] == online
        assert set(rec["sampled"]) <= set(online)
        assert len(rec["sampled"]) == min(2, len(online))
    assert rounds[2]["sampled"] == [ids[3]] and rounds[2]["accepted"] == [ids[3]]
    assert rounds[4]["sampled"] == [ids[0], ids[3]]
    assert rounds[3]["sampled"] == [] and rounds[3]["bytes_down"] == 0
    assert "empty cohort" in rounds[3]["skipped"]
    assert whole.summary["skipped_rounds"] == [3]

    with pytest.raises(KeyboardInterrupt):
        # dies after round 3 is recorded; the last checkpoint is round 2
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(3))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
