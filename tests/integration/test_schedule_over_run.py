"""``client.lr_schedule_span = "run"``: the learning rates each client steps with over a
run are one warm-up and one cosine decay over all of its local steps (DiLoCo), in
every mode, through a resume; with the default ``"round"`` they restart every round."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.federation.runner import resume, run
from fedllm.types import ClientId
from tests.support.plugins import register_client_plugin
from tests.support.runs import InterruptAfter, stable, tiny_config

RATES: dict[tuple[int, ClientId], list[float]] = {}
"""(round, client) -> the learning rate of each of its optimizer steps that round."""


class RateLog(TrainHook):
    def __init__(self, key: tuple[int, ClientId]) -> None:
        self.key = key

    def after_step(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        RATES.setdefault(self.key, []).append(lr)


class RatePlugin(ClientPlugin):
    name = "test_rates"

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        RATES[(ctx.round, ctx.client_id)] = []
        return RateLog((ctx.round, ctx.client_id))


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_client_plugin("test_rates", RatePlugin, order=99)


LR, WARMUP, ROUNDS = 5e-3, 3, 3
SCHEDULE = (
    "federation.algorithms=['test_rates']",
    f"client.lr={LR}",
    f"client.warmup_steps={WARMUP}",
    "client.lr_schedule='cosine'",
    "server.clients_per_round=4",  # every client in every round
)
HETERO = ("client.local_steps=5", "client.local_steps_min=2")  # each client's own H in [2, 5]


def paper_rate(t: int, total: int) -> float:
    """DiLoCo's inner rate at step ``t`` (0-based) of ``total``: a linear warm-up to LR over
    WARMUP steps (LR (t + 1) / (WARMUP + 1)), then a cosine from LR to 0 over the rest."""
    if t < WARMUP:
        return LR * (t + 1) / (WARMUP + 1)
    progress = (t - WARMUP) / (total - WARMUP)
    return LR * 0.5 * (1 + math.cos(math.pi * progress))


def recorded(rounds: int) -> dict[ClientId, list[list[float]]]:
    """Each client's rates, round by round (rounds 1..``rounds``)."""
    clients = sorted({cid for (_, cid) in RATES})
    return {cid: [RATES[(r, cid)] for r in range(1, rounds + 1)] for cid in clients}


@pytest.mark.parametrize("mode", ["federated", "local", "centralized"])
def test_rates_are_one_warmup_and_cosine_over_the_run(tmp_path: Path, mode: str) -> None:
    RATES.clear()
    config = tiny_config(
        *SCHEDULE,
        *HETERO,
        "client.lr_schedule_span='run'",
        f"server.rounds={ROUNDS}",
        f"federation.mode='{mode}'",
    )
    result = run(config, tmp_path / mode)
    per_client = recorded(ROUNDS)
    steps = {cid: {len(r) for r in rounds} for cid, rounds in per_client.items()}
    if mode == "centralized":
        assert list(steps) == ["pooled"]
    else:
        assert len(steps) == 4 and len({len(r[0]) for r in per_client.values()}) > 1
    for cid, rounds in per_client.items():
        (h,) = steps[cid]  # a client's budget is the same every round
        total = ROUNDS * h  # its schedule: its own steps per round x server.rounds
        assert total > WARMUP + 1
        flat = [lr for r in rounds for lr in r]
        assert flat == pytest.approx([paper_rate(t, total) for t in range(total)], rel=1e-12)
        for record, rates in zip(result.records[1:], rounds, strict=True):
            assert record["client_metrics"][cid]["lr_sum"] == pytest.approx(sum(rates))


def test_the_default_round_span_restarts_every_round(tmp_path: Path) -> None:
    RATES.clear()
    result = run(tiny_config(*SCHEDULE, *HETERO, f"server.rounds={ROUNDS}"), tmp_path / "r")
    per_client = recorded(ROUNDS)
    assert len(per_client) == 4
    for rounds in per_client.values():
        for rates in rounds:
            h = len(rates)  # each round: warm-up and decay over its own h steps
            assert rates == pytest.approx([paper_rate(s, h) for s in range(h)], rel=1e-12)
    assert not (result.run_dir / "clients" / "run_schedule").exists()


def test_a_resumed_run_continues_each_clients_schedule(tmp_path: Path) -> None:
    overrides = (
        *SCHEDULE,
        "client.local_steps=2",
        "client.lr_schedule_span='run'",
        "server.rounds=4",
        "run.checkpoint_every=2",
    )
    RATES.clear()
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    uninterrupted = dict(RATES)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(3))
    RATES.clear()
    resumed = resume(tmp_path / "cut")  # from round 2's checkpoint: rounds 3 and 4 again
    assert sorted({r for r, _ in RATES}) == [3, 4]
    replayed = dict(RATES)
    assert replayed == {key: rates for key, rates in uninterrupted.items() if key[0] >= 3}
    for cid in {cid for _, cid in RATES}:
        flat = [lr for r in range(1, 5) for lr in uninterrupted[(r, cid)]]
        assert flat == pytest.approx([paper_rate(t, 8) for t in range(8)], rel=1e-12)
    assert stable(resumed.records) == stable(whole.records)
