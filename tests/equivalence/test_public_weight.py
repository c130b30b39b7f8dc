"""The server's public-data step joins each round with its configured weight:
combined = (1 - lambda) * mean_clients + lambda * delta_public, checked by hand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.algorithms.public_server.server import PublicServerPlugin
from fedllm.client.side import ClientSide
from fedllm.config import ServerConfig
from fedllm.message import Message, Reply
from fedllm.pipeline.stage import Pipeline
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.state import ServerState
from fedllm.types import ClientUpdate, Params
from fedllm.wire import encode_message

X = torch.tensor([1.0, -2.0, 0.5])
D1, D2 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([3.0, 0.0, -1.0])
D_PUBLIC = torch.tensor([-4.0, 6.0, 1.0])


class Scripted:
    """An engine replaying fixed updates (to check the server's arithmetic alone)."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates

    def exchange(self, phase: str, messages: Mapping[str, Message]) -> Iterator[tuple[str, Reply]]:
        for update in self.updates:
            yield update.client_id, ClientSide.reply(update)


SERVER_STEPS = 3


class ScriptedServer:
    """Returns a fixed public update and remembers what it was asked to train from."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta
        self.calls: list[tuple[Params, int]] = []

    def train(self, start: Params, steps: int, round_num: int) -> ClientUpdate:
        assert steps == SERVER_STEPS
        self.calls.append(({k: v.clone() for k, v in start.items()}, round_num))
        return ClientUpdate("public", {"w": self.delta.clone()}, 0, {"train_loss": 1.5})


def participant(server: ScriptedServer, lam: float) -> PublicServerPlugin:
    """The server's public step each round (no warm-up), with share ``lam``."""
    return PublicServerPlugin(server, 0, SERVER_STEPS, lam)  # type: ignore[arg-type]


def play(
    updates: list[ClientUpdate],
    server: ScriptedServer,
    lam: float,
    weighting: str = "examples",
    min_clients: int = 1,
    server_cfg: ServerConfig | None = None,
) -> tuple[ServerState, dict[str, object]]:
    optimizer = build_server_optimizer(server_cfg or ServerConfig())
    params = {"w": X.clone()}
    state = ServerState(0, params, optimizer.initial_state(params))
    pipeline = Pipeline([], WeightedMean())
    setup = TrainingSetup(pipeline, optimizer, [participant(server, lam)], min_clients, weighting)
    record = run_round(state, [u.client_id for u in updates], Scripted(updates), setup)
    return state, record.to_json()


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9])
def test_the_public_update_takes_its_share_of_the_example_weighted_mean(lam: float) -> None:
    updates = [ClientUpdate("a", {"w": D1}, 10), ClientUpdate("b", {"w": D2}, 30)]
    server = ScriptedServer(D_PUBLIC)
    state, record = play(updates, server, lam)
    clients = (10 * D1 + 30 * D2) / 40
    assert torch.allclose(state.params["w"], X + (1 - lam) * clients + lam * D_PUBLIC)
    assert record["public_server"] == {
        "train_loss": 1.5,
        "weight": pytest.approx(lam / (1 - lam) * 40),
    }
    assert record["accepted"] == ["a", "b"]
    sent = sum(len(encode_message(ClientSide.reply(u))) for u in updates)
    assert record["bytes_up"] == sent  # the server's update is not sent
    ((start, round_num),) = server.calls  # trained once, from the broadcast
    assert round_num == 1 and torch.equal(start["w"], X)


def test_uniform_weighting_uses_the_plain_client_mean() -> None:
    updates = [ClientUpdate("a", {"w": D1}, 10), ClientUpdate("b", {"w": D2}, 30)]
    state, _ = play(updates, ScriptedServer(D_PUBLIC), 0.25, weighting="uniform")
    expected = X + 0.75 * (D1 + D2) / 2 + 0.25 * D_PUBLIC
    assert torch.allclose(state.params["w"], expected)


def test_the_server_optimizer_steps_on_the_combined_update() -> None:
    cfg = ServerConfig(optimizer="fedavgm", lr=0.5, momentum=0.9)
    updates = [ClientUpdate("a", {"w": D1}, 1)]
    state, _ = play(updates, ScriptedServer(D_PUBLIC), 0.4, server_cfg=cfg)
    combined = 0.6 * D1 + 0.4 * D_PUBLIC
    assert torch.allclose(state.params["w"], X + 0.5 * combined)  # first step: no momentum yet


def test_rejected_clients_do_not_count_toward_the_public_weight() -> None:
    bad = ClientUpdate("bad", {"w": torch.tensor([float("nan"), 0.0, 0.0])}, 1000)
    updates = [ClientUpdate("a", {"w": D1}, 10), bad]
    state, record = play(updates, ScriptedServer(D_PUBLIC), 0.5)
    assert record["accepted"] == ["a"]
    assert torch.allclose(state.params["w"], X + 0.5 * D1 + 0.5 * D_PUBLIC)


def test_no_public_step_in_a_round_that_is_skipped() -> None:
    server = ScriptedServer(D_PUBLIC)
    updates = [ClientUpdate("a", {"w": D1}, 10)]
    state, record = play(updates, server, 0.5, min_clients=2)
    assert record["skipped"] and torch.equal(state.params["w"], X)
    assert server.calls == [] and "public_server" not in record


def test_a_non_finite_public_update_is_refused_and_the_clients_still_count() -> None:
    updates = [ClientUpdate("a", {"w": D1}, 10)]
    state, record = play(updates, ScriptedServer(torch.tensor([float("inf"), 0, 0])), 0.5)
    assert record["rejected"][0]["client"] == "public"  # type: ignore[index]
    assert torch.allclose(state.params["w"], X + D1)


def test_lambda_outside_zero_one_is_refused() -> None:
    for lam in (0.0, 1.0):
        with pytest.raises(ValueError, match="server_weight"):
            participant(ScriptedServer(D_PUBLIC), lam)
