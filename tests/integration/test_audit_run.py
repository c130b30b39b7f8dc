"""`fedllm audit` after a small run whose canary was inserted many times: the inserted
canary is exposed (the trained model ranks its secret first), the control is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.config import dump_config
from fedllm.federation.rundir import MARKER
from tests.support.runs import TINY, tiny_config

MEMORISE = [
    "data.seq_len=64",
    "data.num_clients=2",
    "server.rounds=3",
    "client.local_steps=20",
    "method.kind=full",
    "client.lr=3e-3",
    "privacy.canaries=1",
    "privacy.canary_repeats=40",
    "privacy.canary_digits=3",
]


def test_an_inserted_canary_is_exposed_and_the_control_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    sets = [arg for item in MEMORISE for arg in ("--set", item)]
    assert main(["run", str(TINY), *sets, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    recorded = summary["data"]["canaries"]
    assert [c["repeats"] for c in recorded] == [40, 0]
    capsys.readouterr()
    assert main(["audit", str(out), "--max-records", "16", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "canary-0" in printed.out and "membership" in printed.out
    audit = json.loads((out / "audit.json").read_text())
    canary, control = audit["canaries"]
    assert (canary["id"], control["id"]) == ("canary-0", "control-0")
    assert canary["secret"] == recorded[0]["secret"]
    # ranked among the 1000 3-digit secrets but the control's (a sibling it cannot be)
    assert canary["exact"] and canary["space"] == 999 and canary["candidates"] == 998
    top = math.log2(999)
    # 40 copies in 62 training examples: the trained model likes the secret best of all
    assert canary["rank"] <= 3 and canary["exposure"] >= top - math.log2(3)
    assert control["exposure"] <= canary["exposure"] - 3  # an unseen secret: no better
    assert set(canary["extraction"]) == {"completion", "digits", "reproduced"}
    clients = audit["membership"]["clients"]
    assert len(clients) == 2
    for row in [*clients.values(), audit["membership"]["all"]]:
        for name in ("loss", "reference"):
            assert 0.0 <= row[name]["auc"] <= 1.0
            low, high = row[name]["auc_interval"]
            assert low <= row[name]["auc"] <= high
            # at most 16 held-out records a client: 1% FPR is not resolvable
            assert row[name]["tpr_at_low_fpr"] is None
    # canaries are not counted as members; every client is capped at 16 a side
    assert all(row["members"] <= 16 and row["nonmembers"] <= 16 for row in clients.values())
    assert audit["membership"]["all"]["members"] == sum(r["members"] for r in clients.values())


def test_bad_options_and_local_runs_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", str(tmp_path), "--max-records", "0"]) == 2
    assert "--max-records = 0: must be at least 1" in capsys.readouterr().err
    local = tmp_path / "local"
    local.mkdir()
    (local / MARKER).write_text("fedllm run directory\n")
    (local / "config.toml").write_text(dump_config(tiny_config("federation.mode=local")))
    assert main(["audit", str(local)]) == 2
    err = capsys.readouterr().err
    assert "local-mode run" in err and "Traceback" not in err
