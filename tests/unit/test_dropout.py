"""Injected dropouts: seeded, from a trace, and carried by the simulator as Dropped."""

from __future__ import annotations

import pytest

from fedllm.config import ConfigError, parse_config
from fedllm.message import ROUND, Dropped, Message
from fedllm.runtime.dropout import DropoutPlan, dropout_plan
from fedllm.runtime.simulation import SimulationEngine

CLIENTS = [f"c{i}" for i in range(200)]


def test_seeded_draw_drops_about_the_probability_and_repeats_exactly() -> None:
    plan = DropoutPlan(probability=0.3, seed=7)
    dropped = [c for c in CLIENTS if plan.drops(c, 3, "train")]
    assert 0.2 < len(dropped) / len(CLIENTS) < 0.4
    assert dropped == [c for c in CLIENTS if DropoutPlan(0.3, seed=7).drops(c, 3, "train")]
    # another round draws again; every phase of one round agrees (a dropped client is gone)
    assert dropped != [c for c in CLIENTS if plan.drops(c, 4, "train")]
    assert dropped == [c for c in CLIENTS if plan.drops(c, 3, "unmask")]


def test_a_trace_says_exactly_who_drops() -> None:
    plan = DropoutPlan(trace={2: ["c1"]})
    assert plan.drops("c1", 2, "train") and not plan.drops("c1", 1, "train")
    assert not plan.drops("c2", 2, "train")


def test_the_simulator_yields_dropped_without_calling_the_client() -> None:
    called: list[str] = []

    def handler(client_id: str, phase: str, message: Message) -> Message:
        called.append(client_id)
        return Message(metrics={"ok": 1.0})

    engine = SimulationEngine(handler, DropoutPlan(trace={1: ["b"]}))
    broadcast = Message(config={ROUND: 1})
    replies = dict(engine.exchange("train", {"a": broadcast, "b": broadcast, "c": broadcast}))
    assert called == ["a", "c"]
    assert isinstance(replies["b"], Dropped) and "trace" in replies["b"].reason
    assert isinstance(replies["a"], Message)


def test_config_builds_the_plan_and_refuses_bad_traces() -> None:
    cfg = parse_config({"server": {"dropout_trace": {"2": ["x"]}}})
    plan = dropout_plan(cfg.server, 0)
    assert plan is not None and plan.drops("x", 2, "train")
    assert dropout_plan(parse_config({}).server, 0) is None
    with pytest.raises(ConfigError, match="round numbers"):
        parse_config({"server": {"dropout_trace": {"first": ["x"]}}})
    with pytest.raises(ConfigError, match="both set"):
        parse_config({"server": {"dropout": 0.2, "dropout_trace": {"1": ["x"]}}})
