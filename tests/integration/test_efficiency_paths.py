"""bf16 autocast and gradient checkpointing on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fedllm.federation.modes import build_mode
from fedllm.federation.setup import prepare
from tests.support.runs import tiny_config


def one_round_state(tmp_path: Path, *overrides: str) -> dict[str, torch.Tensor]:
    ws = prepare(tiny_config("server.rounds=1", *overrides))
    mode = build_mode(ws, tmp_path)
    record = mode.play_round(1, None)
    assert record.train_loss is not None and math.isfinite(record.train_loss)
    return dict(mode.final_states())[""]


def test_gradient_checkpointing_is_switched_on_by_config() -> None:
    on = prepare(tiny_config("client.gradient_checkpointing=true"), with_data=False)
    off = prepare(tiny_config(), with_data=False)
    assert on.model.get_base_model().is_activation_checkpointing
    assert not off.model.get_base_model().is_activation_checkpointing


def test_gradient_checkpointing_gives_the_same_update(tmp_path: Path) -> None:
    plain = one_round_state(tmp_path / "a")
    checkpointed = one_round_state(tmp_path / "b", "client.gradient_checkpointing=true")
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_close_to_fp32(tmp_path: Path) -> None:
    start = prepare(tiny_config()).initial
    fp32 = one_round_state(tmp_path / "a")
    bf16 = one_round_state(tmp_path / "b", "client.bf16=true")
    moved = sum(float((fp32[n] - start[n]).norm()) for n in fp32)
    gap = sum(float((bf16[n] - fp32[n]).norm()) for n in fp32)
    assert moved > 0
    assert gap < 0.5 * moved, "bf16 must follow the fp32 trajectory, if not exactly"
    assert all(v.dtype == torch.float32 for v in bf16.values()), "master weights stay fp32"


def test_bfloat16_base_weights_train_and_exchange_their_own_dtype(tmp_path: Path) -> None:
    state = one_round_state(tmp_path, 'model.dtype="bfloat16"')
    ws = prepare(tiny_config('model.dtype="bfloat16"'), with_data=False)
    frozen = [p for p in ws.model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert {name: t.dtype for name, t in state.items()} == {
        name: t.dtype for name, t in ws.initial.items()
    }
