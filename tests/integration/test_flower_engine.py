"""The Flower engine carries the simulator's rounds unchanged.

The same config and seed give the same round records and the same global state
whether a round's messages are handed to clients in process or travel as Flower
messages (through Flower's protobuf) to per-client node apps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedllm.config import ConfigError, dump_config
from fedllm.deploy.apps import built_node
from fedllm.deploy.link import NodeConfigError
from fedllm.deploy.node_app import node_spec
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.runner import run
from fedllm.federation.setup import Workspace, prepare
from fedllm.message import Dropped, Message
from fedllm.protocol.engine import ClientHandler, Engine
from fedllm.runtime.dropout import DropoutPlan
from fedllm.runtime.flower.engine import FlowerEngine, client_app_handler, flower_engines
from fedllm.runtime.simulation import EngineFactory
from tests.support.flower import InProcessGrid
from tests.support.runs import stable, tiny_config

ROUNDS = 2
CASES = {
    "fedavg_lora": (),
    "scaffold": ('client.drift_correction="scaffold"',),
    "personal": ("personal.keys=['*lora_B*']",),
}


def over_flower(ws: Workspace, grids: list[InProcessGrid]) -> EngineFactory:
    """An engine factory putting each client behind a Flower node (id 100 + index) that
    answers in process with the client side the mode built."""
    assert ws.data is not None
    nodes = {client: 100 + i for i, client in enumerate(ws.data.clients)}

    def factory(handler: ClientHandler, dropouts: DropoutPlan | None) -> Engine:
        apps = {node: client_app_handler(handler, c) for c, node in nodes.items()}
        grids.append(InProcessGrid(apps))
        return flower_engines(grids[-1], nodes)(handler, dropouts)

    return factory


def play(mode: FederatedMode) -> list[dict[str, object]]:
    return [stable(mode.play_round(n, None).to_json()) for n in range(1, ROUNDS + 1)]


@pytest.mark.parametrize("case", CASES)
def test_flower_rounds_equal_the_simulators(case: str, tmp_path: Path) -> None:
    ws = prepare(tiny_config(*CASES[case], f"server.rounds={ROUNDS}"))
    grids: list[InProcessGrid] = []
    simulated = build_mode(ws, tmp_path / "sim")
    carried = build_mode(ws, tmp_path / "flower", over_flower(ws, grids))
    assert isinstance(simulated, FederatedMode) and isinstance(carried, FederatedMode)
    assert isinstance(carried.engine, FlowerEngine)
    assert play(carried) == play(simulated)
    for name, value in simulated.state.params.items():
        assert torch.equal(carried.state.params[name], value), name
    assert sum(grids[0].sent_bytes.values()) > 0
    if case != "fedavg_lora":  # client state stayed with the clients, the same
        sim_files = sorted(p.relative_to(tmp_path / "sim") for p in (tmp_path / "sim").rglob("*"))
        assert sim_files == sorted(
            p.relative_to(tmp_path / "flower") for p in (tmp_path / "flower").rglob("*")
        )


def test_a_node_that_fails_or_stays_silent_is_dropped(tmp_path: Path) -> None:
    ws = prepare(tiny_config("server.clients_per_round=3"))
    grids: list[InProcessGrid] = []
    mode = build_mode(ws, tmp_path, over_flower(ws, grids))
    assert isinstance(mode, FederatedMode) and isinstance(mode.engine, FlowerEngine)
    grid, cohort = grids[0], mode.sampler.cohort(1)
    grid.failing.add(mode.engine.nodes[cohort[0]])
    grid.silent.add(mode.engine.nodes[cohort[1]])
    record = mode.play_round(1, None)
    dropped = {d["client"]: d["reason"] for d in record.extra["dropped"]}
    assert "ClientApp crashed" in dropped[cohort[0]]
    assert "no reply" in dropped[cohort[1]]
    assert record.accepted == [cohort[2]] and record.skipped is None


def test_a_whole_run_over_flower_equals_the_simulated_run(tmp_path: Path) -> None:
    config = tiny_config(f"server.rounds={ROUNDS}")
    simulated = run(config, tmp_path / "sim")
    grids: list[InProcessGrid] = []
    workspace = prepare(config)
    carried = run(config, tmp_path / "flower", engine=over_flower(workspace, grids))
    assert stable(carried.records) == stable(simulated.records)
    assert stable(carried.summary) == stable(simulated.summary)
    assert "transport/evaluate" in carried.records[0]["time_s"]
    for record in carried.records[1:]:  # Flower's time per phase; none in the simulator
        assert record["time_s"]["transport/train"] > 0 and "transport/evaluate" in record["time_s"]
    assert not any("transport/train" in r["time_s"] for r in simulated.records)
    final = {p.name: p.read_bytes() for p in (tmp_path / "sim" / "final").glob("*.safetensors")}
    assert final and final == {
        p.name: p.read_bytes() for p in (tmp_path / "flower" / "final").glob("*.safetensors")
    }


def test_the_reply_timeout_reaches_the_grid_and_late_nodes_are_dropped() -> None:
    def echo(client: str, phase: str, message: Message) -> Message:
        return Message(config={"client": client, "phase": phase})

    nodes = {"a": 1, "b": 2}
    grid = InProcessGrid({n: client_app_handler(echo, c) for c, n in nodes.items()})
    grid.silent.add(2)
    engine = FlowerEngine(grid, nodes, timeout_s=2.5)  # type: ignore[arg-type]
    replies = dict(engine.exchange("train", {c: Message(config={"round": 1}) for c in nodes}))
    assert grid.timeouts == [2.5]
    reply_a = replies["a"]
    assert isinstance(reply_a, Message) and reply_a.config == {"client": "a", "phase": "train"}
    assert isinstance(replies["b"], Dropped) and "no reply" in replies["b"].reason


def write_chats(path: Path, marker: str, n: int) -> None:
    """``n`` chat records, each holding ``marker`` (to look for it where it must not be)."""
    lines = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"what is {marker} number {i}?"},
            {"role": "assistant", "content": f"{marker} {i} is a private record of ours."},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")


def test_nodes_with_their_own_files_train_and_are_scored_where_the_files_are(
    tmp_path: Path,
) -> None:
    """Two organisations' files stay on their nodes: the server gets names and sizes,
    then updates and loss sums; nothing of the text reaches its run directory."""
    config = tiny_config("server.rounds=1", "server.clients_per_round=2", "server.min_clients=2")
    text = dump_config(config)
    apps, sizes, nodes, expected = {}, {}, {}, {}
    for node, org in enumerate(("org-a", "org-b"), start=1):
        data = tmp_path / org / "chats.jsonl"
        data.parent.mkdir()
        records = 12 + 6 * node
        write_chats(data, f"zq{org[-1]}secret", records)
        expected[org] = records - round(config.data.eval_fraction * records)
        node_config = {"data": str(data), "client": org, "state-dir": str(tmp_path / org / "s")}
        client, sizes[org], handler = built_node(text, node_config)  # what its worker runs
        assert client == org
        apps[node], nodes[org] = client_app_handler(handler, org), node
    assert sizes == expected  # data.eval_fraction of each file held out for evaluation
    grid = InProcessGrid(apps)
    result = run(config, tmp_path / "server", engine=flower_engines(grid, nodes), remote=sizes)
    first = result.records[1]
    assert first["sampled"] == ["org-a", "org-b"] and first["accepted"] == ["org-a", "org-b"]
    for record in result.records:
        assert {"client/org-a/loss", "client/org-b/loss"} <= set(record["eval"])
    for path in (tmp_path / "server").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert b"zqasecret" not in content and b"zqbsecret" not in content, path


def test_a_node_without_data_or_with_a_bad_name_is_refused(tmp_path: Path) -> None:
    text = dump_config(tiny_config())
    with pytest.raises(NodeConfigError, match="give data=PATH"):
        node_spec({}, {"config": text})  # refused before any worker starts
    data = tmp_path / "x.jsonl"
    write_chats(data, "x", 4)
    with pytest.raises(NodeConfigError, match="client = '../up'"):
        node_spec({"data": str(data), "client": "../up"}, {"config": text})
    with pytest.raises(ConfigError, match="not TOML"):
        built_node("seed = =", {"partition-id": "0"})
    with pytest.raises(ConfigError, match="partition-id 0 to 3"):
        built_node(text, {"partition-id": "9"})
