"""Client-side defenses in whole tiny runs (cleaning's counts and local reports, FreeLB)
and `fedllm attack` on a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedllm.cli import main
from fedllm.federation.runner import resume
from fedllm.federation.runner import run as run_config
from tests.support.runs import TINY, InterruptAfter, stable, tiny_config

WORDS = 'algorithm.cleaning.words=["robot", "computer"]'


def run(out: Path, *sets: str) -> list[dict[str, Any]]:
    args = ["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def reports(out: Path) -> dict[tuple[int, str], dict[str, Any]]:
    found = {}
    for path in (out / "clients" / "cleaning").rglob("round-*.json"):
        report = json.loads(path.read_text())
        found[(report["round"], report["client"])] = report
    return found


def test_cleaning_reports_locally_and_sends_counts_only_when_allowed(tmp_path: Path) -> None:
    quiet = run(tmp_path / "quiet", WORDS)
    trained = {(r["round"], c) for r in quiet for c in r.get("client_metrics", {})}
    local = reports(tmp_path / "quiet")
    assert set(local) == trained and trained
    assert sum(len(r["removed"]["words"]) for r in local.values()) > 0
    for record in quiet:
        for metrics in record.get("client_metrics", {}).values():
            assert not any(key.startswith("cleaning/") for key in metrics)
    told = run(tmp_path / "told", WORDS, "algorithm.cleaning.report_counts=true")
    assert reports(tmp_path / "told") == local
    for record in told:
        for cid, metrics in record.get("client_metrics", {}).items():
            report = local[(record["round"], cid)]
            assert metrics["cleaning/removed_words"] == len(report["removed"]["words"])
            assert metrics["cleaning/kept"] == report["kept"]
    # the counts travelling changes nothing of the training
    assert [r.get("train_loss") for r in told] == [r.get("train_loss") for r in quiet]


def test_cleaning_that_removes_nothing_trains_as_a_run_without_it(tmp_path: Path) -> None:
    plain = run(tmp_path / "plain", "server.rounds=1")
    nothing = run(
        tmp_path / "nothing", "server.rounds=1", 'algorithm.cleaning.patterns=["zq#never"]'
    )
    assert [r.get("train_loss") for r in nothing] == [r.get("train_loss") for r in plain]
    assert [r.get("eval") for r in nothing] == [r.get("eval") for r in plain]
    freelb = run(tmp_path / "freelb", "server.rounds=1", "algorithm.freelb.steps=2")
    assert freelb[-1]["train_loss"] != plain[-1]["train_loss"]


def test_attack_writes_attack_json_on_a_trained_run(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    run(out, "server.rounds=1")
    assert main(["attack", str(out), "--prompts", "0"]) == 2
    assert "--prompts = 0: must be at least 1" in capsys.readouterr().err
    assert not (out / "attack.json").exists()
    options = ["--prompts", "3", "--eps", "0.05", "0.2", "--pgd-steps", "3"]
    options += ["--suffix-tokens", "3", "--search-steps", "2", "--candidates", "4", "--quiet"]
    assert main(["attack", str(out), *options]) == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["round"] == 1 and report["prompts"] == 3
    pgd = report["pgd"]
    assert [row["eps"] for row in pgd["results"]] == [0.05, 0.2]
    for row in pgd["results"]:
        assert row["increase"] > 0
        assert row["increase"] == pytest.approx(row["attacked_loss"] - row["clean_loss"])
        assert all(p["norm"] <= p["budget"] * (1 + 1e-5) for p in row["per_prompt"])
    small, large = pgd["results"]
    assert large["increase"] > small["increase"]
    suffix = report["suffix"]
    assert len(suffix["per_prompt"]) == 3 and 0 <= suffix["success_rate"] <= 1
    for row in suffix["per_prompt"]:
        assert len(row["suffix"]) == 3 and row["loss"] <= row["start_loss"]
        assert row["scored"] == 1 + 4 * row["steps"]
    printed = capsys.readouterr().out
    assert "PGD" in printed and "suffix" in printed


def test_cleaning_and_freelb_resume_as_the_uninterrupted_run(tmp_path: Path) -> None:
    overrides = (
        WORDS,
        "algorithm.cleaning.loss_rule=zscore",
        "algorithm.cleaning.loss_threshold=1.0",
        "algorithm.cleaning.report_counts=true",
        "algorithm.freelb.steps=2",
        "server.rounds=3",
        "run.checkpoint_every=1",
    )
    whole = run_config(tiny_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_config(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    assert reports(tmp_path / "cut") == reports(tmp_path / "whole")
