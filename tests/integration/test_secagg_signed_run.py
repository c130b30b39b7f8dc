"""Signed SecAgg+ on a deployment whose nodes hold `fedllm certs` keys.

Each node is built as its worker builds it (``built_node`` from the run's config text
and its node config, ``auth-key`` included) and answers Flower messages through
Flower's protobuf (:class:`tests.support.flower.InProcessGrid`); the server runs the
configuration with the roster. A signed round gives the unsigned run's model; a node
whose key is not the roster's is refused, and so is a key the server substitutes,
each with the reason in the round record. The same over a real SuperLink and
SuperNodes (a secure loopback deployment, each node's ``auth-key`` in its node
config), in the last test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedllm.config import Config, dump_config
from fedllm.deploy.apps import built_node
from fedllm.deploy.certs import make_certs, make_node_key
from fedllm.deploy.local import local_deployment, register_node, submit, wait_for_nodes
from fedllm.deploy.policy import allowing
from fedllm.federation.runner import RunResult, run
from fedllm.runtime.flower.engine import client_app_handler, flower_engines
from fedllm.secure.keys import SeededRandomness, generate_key_pair
from fedllm.secure.messages import pack_keys, unpack_signed_keys
from fedllm.secure.roster import roster_toml
from fedllm.secure.secagg.ring import RingSpec
from fedllm.secure.secagg.server_round import SecAggServer
from tests.support.flower import SECAGG_THREE_NODES, InProcessGrid
from tests.support.processes import process_groups_alive
from tests.support.runs import tiny_config

CHAT = {
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ]
}
"""One record of a rogue node's own data file."""

SECAGG = (
    "secagg.enabled=true",
    "secagg.bits=48",
    "secagg.clip_range=0.5",
    "server.weighting='uniform'",
    "server.clients_per_round=4",
    "server.rounds=1",
)
NOT_SIGNED = "do not carry its node's signature"


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def over_nodes(config: Config, keys: Sequence[Path], root: Path) -> RunResult:
    """``config`` run by a server over four nodes, node ``i`` holding partition ``i``
    and signing with ``keys[i]``."""
    text, apps, nodes, sizes = dump_config(config), {}, {}, {}
    for i, key in enumerate(keys):
        node = {"partition-id": str(i), "state-dir": str(root / f"node-{i}"), "auth-key": str(key)}
        node |= allowing(config)  # each node's own roster: the same file here
        client, sizes[client], handler = built_node(text, node)  # what its worker runs
        apps[100 + i], nodes[client] = client_app_handler(handler, client), 100 + i
    grid = InProcessGrid(apps)
    return run(config, root / "server", engine=flower_engines(grid, nodes), remote=sizes)


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The simulator's unsigned run of the same configuration."""
    return run(tiny_config(*SECAGG), tmp_path_factory.mktemp("unsigned") / "run")


def signed_config(tmp_path: Path, unsigned: RunResult) -> tuple[Config, list[Path]]:
    """A Flower configuration with the roster `fedllm certs --client` writes for the
    federation's clients (node i answers for the i-th, sorted), and the node keys."""
    clients = sorted(unsigned.records[-1]["sampled"])
    certs = make_certs(tmp_path / "certs", len(clients), clients=clients)
    assert certs.roster is not None
    config = tiny_config(*SECAGG, "runtime.engine='flower'", f"secagg.roster='{certs.roster}'")
    return config, list(certs.node_keys)


def test_a_signed_round_gives_the_unsigned_model(tmp_path: Path, unsigned: RunResult) -> None:
    config, keys = signed_config(tmp_path, unsigned)
    signed = over_nodes(config, keys, tmp_path)
    record = signed.records[-1]
    assert record["skipped"] is None and record["secagg"]["dropped"] == {}
    assert record["secagg"]["signed"] == 4 and record["secagg"]["unmasked"] == 4
    assert "signed" not in unsigned.records[-1]["secagg"]
    step = RingSpec(48, 0.5, 4).step
    a, b = final_adapter(unsigned.run_dir), final_adapter(signed.run_dir)
    assert a.keys() == b.keys()
    for key in a:  # the nodes' masks are fresh (CSPRNG): the same within one step
        assert (a[key] - b[key]).abs().max().item() <= step + 1e-6 * a[key].abs().max().item()
    assert signed.changed_model


def test_a_node_whose_key_is_not_in_the_roster_is_refused(
    tmp_path: Path, unsigned: RunResult
) -> None:
    config, keys = signed_config(tmp_path, unsigned)
    impostor = make_certs(tmp_path / "impostor", 1).node_keys[0]  # a key nobody registered
    result = over_nodes(config, [*keys[:2], impostor, keys[3]], tmp_path)
    record = result.records[-1]
    victim = sorted(unsigned.records[-1]["sampled"])[2]
    assert record["secagg"]["signed"] == 3
    assert NOT_SIGNED in record["secagg"]["dropped"][victim]
    assert victim not in record["accepted"]
    # 4 clients, degree 2, threshold 2: its neighbours cannot finish without it
    assert "secure aggregation aborted" in record["skipped"]
    assert not result.changed_model


def test_a_key_the_server_substitutes_is_refused_by_the_clients(
    tmp_path: Path, unsigned: RunResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malicious server gives one client its own encryption key for a neighbour (with
    the neighbour's signature): the client refuses the round, saying why."""
    honest = SecAggServer.share_requests
    attacker = generate_key_pair(SeededRandomness(99)).public

    def substitute(self: SecAggServer) -> dict[str, dict[str, bytes]]:
        requests = honest(self)
        target = sorted(requests)[0]
        victim = sorted(requests[target])[0]
        _, public_s, signature = unpack_signed_keys(requests[target][victim])
        requests[target][victim] = pack_keys(attacker, public_s, signature)
        return requests

    monkeypatch.setattr(SecAggServer, "share_requests", substitute)
    config, keys = signed_config(tmp_path, unsigned)
    result = over_nodes(config, keys, tmp_path)
    record = result.records[-1]
    target = sorted(unsigned.records[-1]["sampled"])[0]
    assert "refused" in record["secagg"]["dropped"][target]
    assert NOT_SIGNED in record["secagg"]["dropped"][target]
    assert "secure aggregation aborted" in record["skipped"]
    assert not result.changed_model


def test_signed_secure_aggregation_over_a_superlink_and_supernodes(tmp_path: Path) -> None:
    """A TLS, node-authenticated loopback deployment of three SuperNodes whose keys
    `fedllm certs` made, with their roster: the round is signed and gives the unsigned
    simulator's model; with a server roster naming another key for one client, that client's
    keys are refused and the round says why. Two more nodes whose keys were registered
    with the SuperLink but are not the roster's (one answering as 'rogue', one as a
    member) are refused at admission: neither appears in the records, and
    admission.json says why. No process outlives the deployment."""
    overrides = SECAGG_THREE_NODES
    simulated = run(tiny_config(*overrides), tmp_path / "sim")
    clients = sorted(simulated.records[-1]["sampled"])
    home = tmp_path / "home"
    flower = (*overrides, "runtime.engine='flower'")
    roster = home / "certs" / "roster.toml"
    signed = tiny_config(*flower, f"secagg.roster='{roster}'", f"runtime.roster='{roster}'")
    impostor = make_certs(tmp_path / "impostor", 1).node_public_keys[0].read_bytes()
    rogue_data = tmp_path / "rogue.jsonl"
    rogue_data.write_text("".join(json.dumps(CHAT) + "\n" for _ in range(12)))
    with local_deployment(3, home=home, secure=True, clients=clients) as deployment:
        groups = set(deployment.pids)
        assert deployment.certs is not None
        rogues = [make_node_key(tmp_path / f"rogue-{i}", "rogue") for i in range(2)]
        rogue_ids = [register_node(deployment, files.public) for files in rogues]
        for i, (files, claim) in enumerate(zip(rogues, ["rogue", clients[0]], strict=True)):
            config = {"data": str(rogue_data), "client": claim, "auth-key": str(files.private)}
            deployment.start_supernode(3 + i, key=files.private, node_config=config)
        wait_for_nodes(deployment, [*deployment.node_ids, *rogue_ids], timeout_s=60)
        groups |= set(deployment.pids)
        submit(deployment, signed, {"out": str(tmp_path / "signed"), "nodes": 3}, 600)
        keys = [p.read_bytes() for p in deployment.certs.node_public_keys]
        forged = tmp_path / "forged.toml"  # client 1's entry: a key its node does not hold
        entries = dict(zip(clients, [keys[0], impostor, keys[2]], strict=True))
        forged.write_text(roster_toml(entries))
        refused = tiny_config(*flower, f"secagg.roster='{forged}'", f"runtime.roster='{roster}'")
        submit(deployment, refused, {"out": str(tmp_path / "refused"), "nodes": 3}, 600)
    assert process_groups_alive(groups) == []

    record = _last_record(tmp_path / "signed")
    assert "rogue" not in (tmp_path / "signed" / "metrics.jsonl").read_text()
    admission = json.loads((tmp_path / "signed" / "admission.json").read_text())
    assert sorted(admission["admitted"]) == clients
    refused = {r["client"]: r["reason"] for r in admission["refused"]}
    assert set(refused) == {"rogue", clients[0]}
    assert "not a member" in refused["rogue"] and "does not verify" in refused[clients[0]]
    assert record["skipped"] is None and record["secagg"]["signed"] == 3
    assert record["secagg"]["unmasked"] == 3
    step = RingSpec(48, 0.5, 3).step
    a, b = final_adapter(tmp_path / "sim"), final_adapter(tmp_path / "signed")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= step + 1e-6 * a[key].abs().max().item()

    record = _last_record(tmp_path / "refused")
    assert record["secagg"]["signed"] == 2
    assert NOT_SIGNED in record["secagg"]["dropped"][clients[1]]
    assert "secure aggregation aborted" in record["skipped"]


def _last_record(out: Path) -> dict[str, Any]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    last: dict[str, Any] = json.loads(lines[-1])
    return last
