"""What leaves a client and what the run writes, under each privacy mechanism (issue 25,
point 4): an engine that records every reply stands in for a curious server."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fedllm.client.disclosure import PUBLIC_METRICS, disclosed, kept, strictest
from fedllm.federation.runner import run
from fedllm.message import Dropped, Message, Reply
from fedllm.protocol.engine import ClientHandler
from fedllm.runtime.dropout import DropoutPlan
from fedllm.runtime.simulation import SimulationEngine
from fedllm.types import ClientId
from tests.support.runs import tiny_config

CENTRAL = (
    "privacy.dp='central'",
    "privacy.clip_norm=0.05",
    "privacy.noise_multiplier=0.5",
    "privacy.adaptive_clip=true",
    "privacy.clip_count_noise=1.0",
    "server.weighting='uniform'",
)
SECAGG = (
    "secagg.enabled=true",
    "server.weighting='uniform'",
    "data.num_clients=4",
    "server.clients_per_round=4",
    "server.min_clients=3",
)
LOCAL = ("privacy.dp='local'", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0")


class Recording(SimulationEngine):
    """The simulator, keeping every reply's metrics (what a server receives)."""

    seen: ClassVar[list[dict[str, float]]] = []

    def __init__(self, handler: ClientHandler, dropouts: DropoutPlan | None = None) -> None:
        super().__init__(handler, dropouts)

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        for client_id, reply in super().exchange(phase, messages):
            if not isinstance(reply, Dropped):
                Recording.seen.append(dict(reply.metrics))
            yield client_id, reply


def records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["round"] > 0]


def played(overrides: tuple[str, ...], out: Path) -> list[dict[str, float]]:
    Recording.seen = []
    run(tiny_config(*overrides, "server.rounds=2"), out, engine=Recording)
    return [m for m in Recording.seen if "steps" in m]  # training replies


TRAINING_STATISTICS = ("train_loss", "tokens", "label_tokens", "clip/norm", "clip/clipped")


@pytest.mark.parametrize(
    ("overrides", "public"),
    [(SECAGG, set()), (LOCAL, {"local_epsilon"})],
    ids=["secagg", "local_dp"],
)
def test_untrusted_servers_receive_only_public_metrics(
    tmp_path: Path, overrides: tuple[str, ...], public: set[str]
) -> None:
    replies = played(overrides, tmp_path / "run")
    assert replies
    for metrics in replies:
        assert set(metrics) <= PUBLIC_METRICS | public | {"he/encrypt_s"}
        assert public <= set(metrics)
    for record in records(tmp_path / "run"):
        assert record["train_loss"] is None and "tokens" not in record
        for metrics in record["client_metrics"].values():
            assert not set(metrics) & set(TRAINING_STATISTICS)


def test_central_dp_s_trusted_server_uses_the_clip_bits_but_writes_none_out(
    tmp_path: Path,
) -> None:
    replies = played(CENTRAL, tmp_path / "run")
    assert all("clip/clipped" in m and "train_loss" in m for m in replies)  # it needs them
    written = records(tmp_path / "run")
    for record in written:
        assert record["train_loss"] is None and "tokens" not in record
        for metrics in record["client_metrics"].values():
            assert set(metrics) <= PUBLIC_METRICS
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] > 0


def test_without_a_privacy_mechanism_everything_is_kept(tmp_path: Path) -> None:
    replies = played((), tmp_path / "run")
    assert all("train_loss" in m for m in replies)
    record = records(tmp_path / "run")[-1]
    assert record["train_loss"] is not None and record["tokens"] > 0
    assert all("train_loss" in m for m in record["client_metrics"].values())


def test_the_strictest_mechanism_decides() -> None:
    metrics = {"train_loss": 2.0, "steps": 3.0, "local_epsilon": 1.5, "clip/clipped": 1.0}
    assert strictest(["all", "server"]) == "server"
    assert strictest(["server", "public", "all"]) == "public"
    assert strictest([]) == "all"
    assert disclosed(metrics, "server") == metrics
    assert disclosed(metrics, "public", frozenset({"local_epsilon"})) == {
        "steps": 3.0,
        "local_epsilon": 1.5,
    }
    assert kept(metrics, "server") == {"steps": 3.0}
    assert kept(metrics, "all") == metrics
