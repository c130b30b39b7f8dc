"""Real-model runs (SmolLM2-135M): `make test-slow`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedllm.config import load_config
from fedllm.eval.generate import generate_reply
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare
from fedllm.model.load import load_base_model
from tests.support.generation import greedy_reference
from tests.support.runs import ROOT

pytestmark = pytest.mark.slow


def test_demo_recipe_lowers_held_out_perplexity_and_exports(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "demo.toml",
        [
            "server.rounds=2",
            "client.local_steps=4",
            "data.max_eval_examples=8",
            "data.max_test_examples=8",
        ],
    )
    result = run(cfg, tmp_path / "demo")
    first, last = result.records[0]["eval"], result.records[-1]["eval"]
    assert last["clients_ppl_mean"] < first["clients_ppl_mean"]
    assert result.summary["trainable_parameters"] == 460_800  # r=8 on q/v, 30 layers

    ws = prepare(cfg, with_data=False)
    peft_model = PeftModel.from_pretrained(load_base_model(cfg.model, 0), result.run_dir / "final")
    prompt = "What do you like to do on weekends?"
    reply = generate_reply(peft_model, ws.tokenizer, prompt, 12)
    assert reply.strip()
    assert reply == greedy_reference(peft_model, ws.tokenizer, prompt, new_tokens=12)


def test_bf16_autocast_trains_the_real_model(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "demo.toml",
        [
            "server.rounds=2",
            "client.local_steps=2",
            "client.bf16=true",
            "client.gradient_checkpointing=true",
            "data.max_eval_examples=4",
            "data.max_test_examples=4",
        ],
    )
    result = run(cfg, tmp_path / "bf16")
    losses = [r["train_loss"] for r in result.records[1:]]
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = result.records[0]["eval"], result.records[-1]["eval"]
    assert last["clients_loss_mean"] < first["clients_loss_mean"]  # it learns, not only runs
