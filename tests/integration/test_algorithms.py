"""SCAFFOLD, FedNova and heterogeneous step budgets in whole runs on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedllm.algorithms.personal.split import PersonalSplit
from fedllm.config import ConfigError
from fedllm.federation.rundir import RunDir
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.federation.trained import load_trained
from tests.support.runs import InterruptAfter, stable, tiny_config

SCAFFOLD = ('client.drift_correction="scaffold"', "server.clients_per_round=2", "server.rounds=3")


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_scaffold_runs_and_sends_its_control_variates(tmp_path: Path, kind: str) -> None:
    extra = ("method.kind=full", "server.rounds=2") if kind == "full" else ()
    plain = run(tiny_config("server.rounds=2", *extra[:1]), tmp_path / "plain").records
    result = run(tiny_config(*SCAFFOLD, *extra), tmp_path / "scaffold")
    rounds = [r for r in result.records if r["round"] >= 1]
    assert all(r["skipped"] is None and len(r["accepted"]) == 2 for r in rounds)
    # the model and c go down, the delta and the change of c_i come up: twice the bytes
    base = next(r for r in plain if r["round"] == 1)
    first = rounds[0]
    assert first["bytes_down"] == pytest.approx(2 * base["bytes_down"], rel=0.01)
    assert first["bytes_up"] == pytest.approx(2 * base["bytes_up"], rel=0.01)
    assert first["train_loss"] == pytest.approx(base["train_loss"])  # c = c_i = 0 at first
    trained = {c for r in rounds for c in r["accepted"]}
    stored = {p.name for p in (result.run_dir / "clients" / "scaffold").glob("*.safetensors")}
    assert stored == {f"{c}.safetensors" for c in trained}
    ckpt = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    control = load_file(ckpt / "scaffold.safetensors")
    assert set(control) == set(load_file(ckpt / "global.safetensors"))
    assert any(float(t.abs().sum()) > 0 for t in control.values())


def test_scaffold_resume_equals_uninterrupted(tmp_path: Path) -> None:
    overrides = (*SCAFFOLD, "server.rounds=4", "run.checkpoint_every=2")
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(3))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)


def cosine_momentum_norm(steps: int, lr: float, rho: float) -> float:
    """FedNova's a_i for SGD with momentum under a cosine schedule, transcribed: the
    coefficient of step k's gradient is sum_{j >= k} (lr_j / lr) rho^(j - k)."""
    lrs = [lr * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    return sum(lrs[j] / lr * rho ** (j - k) for k in range(steps) for j in range(k, steps))


def test_heterogeneous_budgets_with_fednova(tmp_path: Path) -> None:
    cfg = tiny_config(
        "client.local_steps=4",
        "client.local_steps_min=1",
        'client.optimizer="sgd"',
        "client.lr=0.05",
        "client.momentum=0.5",
        'client.lr_schedule="cosine"',
        'server.normalize="fednova"',
        'server.weighting="uniform"',
        "server.clients_per_round=4",
        "server.rounds=1",
    )
    result = run(cfg, tmp_path / "nova")
    (record,) = [r for r in result.records if r["round"] == 1]
    steps = {c: int(m["steps"]) for c, m in record["client_metrics"].items()}
    assert all(1 <= s <= 4 for s in steps.values()) and len(set(steps.values())) > 1
    norms = {c: m["fednova_a"] for c, m in record["client_metrics"].items()}
    for client, norm in norms.items():  # the rates the steps took, momentum included
        assert norm == pytest.approx(cosine_momentum_norm(steps[client], 0.05, 0.5), rel=1e-12)
    tau_eff = sum(norms.values()) / len(norms)  # uniform weights
    assert record["fednova_tau_eff"] == pytest.approx(tau_eff, rel=1e-12)
    again = run(cfg, tmp_path / "again").records
    assert stable(again) == stable(result.records)  # budgets are fixed by the seed


def test_budgets_by_client_are_checked_against_the_federation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown client"):
        run(tiny_config("client.local_steps_by_client={nobody=2}"), tmp_path / "x")


def test_scaffold_with_personal_parameters_keeps_the_two_stores_apart(tmp_path: Path) -> None:
    overrides = (*SCAFFOLD, "server.rounds=2", 'personal.keys=["*lora_B*"]')
    result = run(tiny_config(*overrides), tmp_path / "both")
    clients = result.summary["data"]["clients"]
    exported = sorted(p.name for p in (result.run_dir / "final" / "clients").iterdir())
    assert exported == sorted(clients)
    ws = prepare(tiny_config(*overrides), with_data=False)
    trained = load_trained(RunDir(result.run_dir), ws.initial, PersonalSplit(("*lora_B*",)))
    assert set(trained.client_files) <= set(clients)  # no control-variate entries
    trained_ids = {c for r in result.records for c in r.get("accepted", [])}
    for cid in trained_ids:
        personal = load_file(trained.client_files[cid])
        control = load_file(result.run_dir / "clients" / "scaffold" / f"{cid}.safetensors")
        assert all("lora_B" in k for k in personal)
        assert not any("lora_B" in k for k in control)  # c_i covers the shared part only


def test_kept_optimizer_state_resumes_exactly(tmp_path: Path) -> None:
    overrides = ("client.keep_optimizer_state=true", "server.rounds=4", "run.checkpoint_every=2")
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(3))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    fresh = run(tiny_config("server.rounds=4"), tmp_path / "fresh")
    assert stable(fresh.records) != stable(whole.records)  # the state changes training
