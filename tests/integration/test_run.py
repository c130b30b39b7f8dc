"""Whole runs on the tiny model: determinism, resume, rejection, modes, export."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedllm.client.side import ClientSide
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.message import ConfigValue
from fedllm.model.load import load_base_model
from fedllm.model.state import set_trainable_state
from fedllm.types import ClientUpdate
from tests.support.runs import InterruptAfter, stable, tiny_config


def test_run_writes_the_whole_story(tmp_path: Path) -> None:
    result = run(tiny_config(), tmp_path / "run")
    root = result.run_dir
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        assert (root / name).is_file(), name
    records = result.records
    assert [r["round"] for r in records] == [0, 1, 2]
    for rec in records[1:]:
        assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0
        assert len(rec["sampled"]) == 2 and rec["accepted"] == rec["sampled"]
        assert {"train", "aggregate", "round"} <= set(rec["time_s"])
        assert rec["peak_rss_mb"] > 0
        assert "clients_ppl_mean" in rec["eval"] and "test_ppl" in rec["eval"]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["trainable_parameters"] < summary["parameters"]
    assert (root / "final" / "adapter_model.safetensors").is_file()
    assert (root / "checkpoints" / "round-00002" / "global.safetensors").is_file()


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    first = run(tiny_config(), tmp_path / "a").records
    second = run(tiny_config(), tmp_path / "b").records
    assert stable(first) == stable(second)
    other = run(tiny_config("seed=1"), tmp_path / "c").records
    assert stable(other) != stable(first)


@pytest.mark.parametrize(
    ("mode", "optimizer"), [("federated", "fedavg"), ("local", "fedavg"), ("federated", "fedadam")]
)
def test_resume_equals_uninterrupted(tmp_path: Path, mode: str, optimizer: str) -> None:
    overrides = (
        f'federation.mode="{mode}"',
        f'server.optimizer="{optimizer}"',
        "server.lr=0.05" if optimizer == "fedadam" else "server.lr=1.0",
        "server.rounds=4",
        "run.checkpoint_every=2",
    )
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        # dies after round 3 is recorded; the last checkpoint is round 2
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(3))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    for path in sorted((whole.run_dir / "final").rglob("*.safetensors")):
        twin = resumed.run_dir / "final" / path.relative_to(whole.run_dir / "final")
        a, b = load_file(path), load_file(twin)
        assert all(torch.equal(a[k], b[k]) for k in a), path


def test_resume_can_extend_rounds_but_nothing_else(tmp_path: Path) -> None:
    run(tiny_config("server.rounds=1"), tmp_path / "r")
    extended = resume(tmp_path / "r", ["server.rounds=2"])
    assert [r["round"] for r in extended.records] == [0, 1, 2]
    with pytest.raises(ValueError, match="client.lr"):
        resume(tmp_path / "r", ["client.lr=0.5"])


def test_refuses_to_clobber_a_run(tmp_path: Path) -> None:
    run(tiny_config("server.rounds=1"), tmp_path / "r")
    with pytest.raises(ValueError, match="already holds a run"):
        run(tiny_config("server.rounds=1"), tmp_path / "r")


def corrupting(mode: FederatedMode, bad: dict[str, str]) -> None:
    """Make the named clients send a NaN or a wrong-shape update."""
    side = mode.side
    assert isinstance(side, ClientSide)
    inner = side.client_halves

    def halves(update: ClientUpdate, config: Mapping[str, ConfigValue]) -> ClientUpdate:
        update = inner(update, config)
        name = next(iter(update.delta))
        if bad.get(update.client_id) == "nan":
            update.delta[name] = torch.full_like(update.delta[name], float("nan"))
        elif bad.get(update.client_id) == "shape":
            update.delta[name] = update.delta[name][..., :1].clone()
        return update

    side.client_halves = halves


def test_bad_updates_are_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    cfg = tiny_config("server.clients_per_round=4", "data.num_clients=4")
    ws = prepare(cfg)
    mode = build_mode(ws, tmp_path)
    assert isinstance(mode, FederatedMode)
    clients = list(mode.clients)
    corrupting(mode, {clients[0]: "nan", clients[1]: "shape"})
    before = {k: v.clone() for k, v in mode.state.params.items()}
    record = mode.play_round(1, None)
    reasons = {r["client"]: r["reason"] for r in record.rejected}
    assert "NaN" in reasons[clients[0]] and "shape" in reasons[clients[1]]
    assert record.accepted == clients[2:]
    assert record.skipped is None
    assert any(not torch.equal(before[k], mode.state.params[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in mode.state.params.values())


def test_too_few_accepted_updates_skip_the_round(tmp_path: Path) -> None:
    cfg = tiny_config("server.clients_per_round=2", "server.min_clients=2")
    ws = prepare(cfg)
    mode = build_mode(ws, tmp_path)
    assert isinstance(mode, FederatedMode)
    cohort_bad = dict.fromkeys(mode.clients, "nan")
    first = next(iter(mode.clients))
    cohort_bad.pop(first)
    corrupting(mode, cohort_bad)
    before = {k: v.clone() for k, v in mode.state.params.items()}
    record = mode.play_round(1, None)
    assert record.skipped is not None and "min_clients = 2" in record.skipped
    assert all(torch.equal(before[k], mode.state.params[k]) for k in before)
    assert mode.state.round == 1


def test_local_mode_keeps_one_model_per_client(tmp_path: Path) -> None:
    result = run(tiny_config('federation.mode="local"', "server.rounds=2"), tmp_path / "loc")
    assert all(r.get("bytes_up", 0) == 0 for r in result.records)
    exported = sorted(p.name for p in (result.run_dir / "final" / "clients").iterdir())
    assert exported == sorted(result.summary["data"]["clients"])
    trained = {c for r in result.records for c in r.get("accepted", [])}
    assert trained and trained <= set(exported)


def test_centralized_mode_spends_the_federation_budget(tmp_path: Path) -> None:
    result = run(
        tiny_config('federation.mode="centralized"', "server.rounds=1", "client.local_steps=2"),
        tmp_path / "cen",
    )
    (round1,) = [r for r in result.records if r["round"] == 1]
    assert round1["sampled"] == ["pooled"]
    assert round1["client_metrics"]["pooled"]["steps"] == 4.0  # 2 clients x 2 steps
    assert "clients_ppl_mean" in round1["eval"]


def test_final_adapter_and_merged_export_reproduce_the_model(tmp_path: Path) -> None:
    cfg = tiny_config("server.rounds=1")
    result = run(cfg, tmp_path / "r")
    ws = prepare(cfg, with_data=False)
    global_state = load_file(result.run_dir / "checkpoints" / "round-00001" / "global.safetensors")
    set_trainable_state(ws.model, global_state)
    ws.model.eval()
    ids = torch.tensor([[1, 200, 300, 400, 500]])
    expected = ws.model(input_ids=ids).logits

    peft_model = PeftModel.from_pretrained(
        load_base_model(cfg.model, cfg.seed), result.run_dir / "final"
    )
    peft_model.eval()
    torch.testing.assert_close(peft_model(input_ids=ids).logits, expected)

    from fedllm.federation.export import export_one

    export_one(ws, global_state, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    merged.eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
