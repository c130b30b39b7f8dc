"""Public + private data in whole runs on the tiny model: public_ppl, the warm-up,
the server's public step and mixing, resumed exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedllm.eval.evaluate import evaluate
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.model.state import set_trainable_state
from tests.support.runs import InterruptAfter, stable, tiny_config

PUBLIC = ('public.source="pydoc"', "public.max_examples=40", "public.max_eval_examples=6")
ALL_MODES = (
    *PUBLIC,
    "public.warmup_steps=4",
    "public.server_steps=2",
    "public.server_weight=0.25",
    "public.mix_ratio=0.25",
    "server.rounds=3",
    "run.checkpoint_every=1",
)


def test_public_ppl_is_reported_at_every_evaluation(tmp_path: Path) -> None:
    result = run(tiny_config(*PUBLIC), tmp_path / "run")
    assert all(
        "public_ppl" in r["eval"] and "clients_ppl_mean" in r["eval"] for r in result.records
    )
    assert result.summary["final"]["public_ppl"] == result.records[-1]["eval"]["public_ppl"]
    # the same number, scored again from the saved global model
    ws = prepare(tiny_config(*PUBLIC))
    assert ws.public is not None and len(ws.public.eval) == 6
    ckpt = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    set_trainable_state(ws.model, load_file(ckpt / "global.safetensors"))
    held = evaluate(ws.model, ws.public.eval, ws.config.eval.batch_size, ws.pad_id)
    assert result.records[-1]["eval"]["public_ppl"] == pytest.approx(math.exp(held.loss))
    assert "public_warmup" not in result.records[1] and "public_server" not in result.records[1]


def test_warm_up_once_server_step_weighted_and_resumed(tmp_path: Path) -> None:
    whole = run(tiny_config(*ALL_MODES), tmp_path / "whole")
    warmed = [r for r in whole.records if "public_warmup" in r]
    assert [r["round"] for r in warmed] == [1] and warmed[0]["public_warmup"]["steps"] == 4
    sizes = {cid: c["train"] for cid, c in whole.summary["data"]["clients"].items()}
    for record in whole.records[1:]:
        client_weight = sum(sizes[c] for c in record["accepted"])
        server = record["public_server"]
        assert server["weight"] == pytest.approx(0.25 / 0.75 * client_weight)
        assert server["steps"] == 2 and "public" not in record["client_metrics"]

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*ALL_MODES), tmp_path / "cut", reporter=InterruptAfter(1))
    resumed = resume(tmp_path / "cut")  # from the checkpoint after round 1: warmed up
    assert stable(resumed.records) == stable(whole.records)

    cold = tiny_config(*ALL_MODES, "public.warmup_steps=0", "server.rounds=1")
    unwarmed = run(cold, tmp_path / "cold").records
    assert whole.records[0]["eval"] == unwarmed[0]["eval"]  # round 0: the untrained baseline
    assert whole.records[1]["eval"]["public_loss"] < unwarmed[1]["eval"]["public_loss"]


def test_local_clients_mix_public_data_and_report_public_ppl(tmp_path: Path) -> None:
    cfg = tiny_config(*PUBLIC, 'federation.mode="local"', "public.mix_ratio=0.5", "server.rounds=1")
    result = run(cfg, tmp_path / "local")
    assert all("public_ppl" in r["eval"] for r in result.records)
    # every batch of 4 holds 2 public 48-token blocks: 47 scored tokens each, 3 steps
    for metrics in result.records[1]["client_metrics"].values():
        assert metrics["tokens"] >= 3 * 2 * 47
