"""What the run does with crashes, bad input and careless commands: nothing is lost."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.side import ClientSide
from fedllm.eval.evaluate import evaluate
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.rundir import RunDirError
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.message import Message
from fedllm.model.state import set_trainable_state
from fedllm.types import ClientUpdate
from tests.support.runs import stable, tiny_config


def test_crash_between_checkpoint_and_metrics_line_loses_no_round(tmp_path: Path) -> None:
    whole = run(tiny_config("server.rounds=3"), tmp_path / "whole")
    cut = run(tiny_config("server.rounds=3"), tmp_path / "cut")
    lines = (cut.run_dir / "metrics.jsonl").read_text().splitlines()
    # the process died after checkpointing round 3, before its metrics line was written
    (cut.run_dir / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    resumed = resume(cut.run_dir)
    assert stable(resumed.records) == stable(whole.records)
    assert resumed.summary["rounds"] == 3


def test_torn_last_metrics_line_does_not_block_resume(tmp_path: Path) -> None:
    whole = run(tiny_config("server.rounds=2"), tmp_path / "whole")
    cut = run(tiny_config("server.rounds=2", "run.checkpoint_every=1"), tmp_path / "cut")
    path = cut.run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # half-written line
    resumed = resume(cut.run_dir)
    assert stable(resumed.records) == stable(whole.records)


def test_resume_refuses_to_shrink_or_restart_a_run(tmp_path: Path) -> None:
    done = run(tiny_config("server.rounds=2"), tmp_path / "r")
    with pytest.raises(RunDirError, match="can only extend"):
        resume(done.run_dir, ["server.rounds=1"])
    for ckpt in (done.run_dir / "checkpoints").iterdir():
        for f in ckpt.iterdir():
            if f.is_file():
                f.unlink()
    with pytest.raises(RunDirError, match="no readable checkpoint"):
        resume(done.run_dir)
    assert (done.run_dir / "final").exists() and (done.run_dir / "metrics.jsonl").exists()


def test_overwrite_with_a_broken_config_keeps_the_old_run(tmp_path: Path) -> None:
    old = run(tiny_config("server.rounds=1"), tmp_path / "r")
    before = (old.run_dir / "metrics.jsonl").read_text()
    broken = tiny_config("server.rounds=1", f'data.source="{tmp_path / "missing.jsonl"}"')
    with pytest.raises(Exception, match="missing.jsonl"):
        run(broken, old.run_dir, overwrite=True)
    assert (old.run_dir / "metrics.jsonl").read_text() == before


def test_overwrite_removes_only_the_runs_own_files(tmp_path: Path) -> None:
    old = run(tiny_config("server.rounds=1"), tmp_path / "r")
    (old.run_dir / "notes.txt").write_text("mine")
    run(tiny_config("server.rounds=1"), old.run_dir, overwrite=True)
    assert (old.run_dir / "notes.txt").read_text() == "mine"


def test_refuses_a_folder_that_is_not_a_run_even_with_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.toml").write_text("# someone else's\n")
    with pytest.raises(RunDirError, match="holds no fedllm run"):
        run(tiny_config("server.rounds=1"), folder, overwrite=True)
    assert (folder / "config.toml").read_text() == "# someone else's\n"


class Saboteur(ClientPlugin):
    """The named clients corrupt their update once trained (composed after every other
    plug-in; the tiny recipe's pipeline has no client stage that would act after it)."""

    name = "saboteur"

    def __init__(self, how: dict[str, object]) -> None:
        self.how = how

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        bad = self.how.get(ctx.client_id)
        name = next(iter(update.delta))
        if bad == "list":
            update.delta[name] = update.delta[name].tolist()  # type: ignore[assignment]
        elif bad == "uint32":
            update.delta[name] = update.delta[name].to(torch.uint32)
        elif bad == "nan-weight":
            update.num_examples = math.nan  # type: ignore[assignment]
        elif bad == "zero-weight":
            update.num_examples = 0
        elif bad == "huge":
            update.delta = {k: torch.full_like(v, 3e38) for k, v in update.delta.items()}
        return update


def sabotage(mode: FederatedMode, how: dict[str, object]) -> None:
    """The named clients send the given malformed update."""
    side = mode.side
    assert isinstance(side, ClientSide)
    assert not mode.pipeline.stages, "no client stage may act on the update after the saboteur"
    side.plugins = [*side.plugins, Saboteur(how)]
    handler = mode.engine.handler

    def handle(client_id: str, phase: str, message: Message) -> Message:
        reply = handler(client_id, phase, message)
        if how.get(client_id) == "not-a-dict":
            # a delta that is no mapping can't be joined into a message's arrays: the
            # client sends arrays that are no mapping
            reply.arrays = None  # type: ignore[assignment]
        return reply

    mode.engine.handler = handle


def tiny_mode(tmp_path: Path, *overrides: str) -> FederatedMode:
    ws = prepare(tiny_config("server.clients_per_round=4", *overrides))
    mode = build_mode(ws, tmp_path)
    assert isinstance(mode, FederatedMode)
    return mode


def test_malformed_updates_are_rejected_not_crashing(tmp_path: Path) -> None:
    mode = tiny_mode(tmp_path)
    ids = list(mode.clients)
    sabotage(mode, {ids[0]: "list", ids[1]: "uint32", ids[2]: "nan-weight"})
    record = mode.play_round(1, None)
    reasons = {r["client"]: r["reason"] for r in record.rejected}
    assert "not a tensor" in reasons[ids[0]]
    assert "dtype torch.uint32" in reasons[ids[1]]
    assert "not an integer" in reasons[ids[2]]
    assert record.accepted == [ids[3]] and record.skipped is None
    assert all(torch.isfinite(v).all() for v in mode.state.params.values())


def test_non_mapping_update_is_rejected(tmp_path: Path) -> None:
    mode = tiny_mode(tmp_path, "pipeline.clip_norm=none")
    ids = list(mode.clients)
    sabotage(mode, {ids[0]: "not-a-dict"})
    record = mode.play_round(1, None)
    assert "not a mapping" in record.rejected[0]["reason"]


def test_zero_total_weight_and_overflow_skip_the_round(tmp_path: Path) -> None:
    mode = tiny_mode(tmp_path)
    sabotage(mode, dict.fromkeys(mode.clients, "zero-weight"))
    before = {k: v.clone() for k, v in mode.state.params.items()}
    record = mode.play_round(1, None)
    assert record.skipped is not None and "zero total weight" in record.skipped
    assert all(torch.equal(before[k], mode.state.params[k]) for k in before)

    mode = tiny_mode(tmp_path)
    sabotage(mode, dict.fromkeys(mode.clients, "huge"))
    record = mode.play_round(1, None)
    assert record.skipped is not None and "not finite" in record.skipped


def test_local_mode_test_split_is_the_mean_over_every_clients_model(tmp_path: Path) -> None:
    cfg = tiny_config('federation.mode="local"', "server.rounds=2")
    result = run(cfg, tmp_path / "loc")
    ws = prepare(cfg)
    assert ws.data is not None
    clients_dir = result.run_dir / "clients"
    losses, tokens = 0.0, 0
    for cid in ws.data.clients:
        path = clients_dir / f"{cid}.safetensors"
        set_trainable_state(ws.model, load_file(path) if path.exists() else ws.initial)
        held = evaluate(ws.model, ws.data.test, cfg.eval.batch_size, ws.pad_id)
        losses, tokens = losses + held.loss_sum, tokens + held.tokens
    final = result.records[-1]["eval"]
    assert final["test_loss"] == pytest.approx(losses / tokens, rel=1e-6)


def test_centralized_sends_nothing(tmp_path: Path) -> None:
    result = run(tiny_config('federation.mode="centralized"', "server.rounds=1"), tmp_path / "c")
    assert result.summary["bytes_up"] == 0 and result.summary["bytes_down"] == 0
