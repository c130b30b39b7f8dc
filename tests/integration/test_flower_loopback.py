"""fedllm on a real Flower deployment on loopback: a SuperLink, two SuperNodes, `flwr run`.

The same config and seed give the simulator's metrics and final tensors, and every
process the deployment started is gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from fedllm.config import dump_config
from fedllm.deploy.local import local_deployment, submit
from fedllm.federation.runner import run
from tests.support.runs import stable, tiny_config

TWO_CLIENTS = ("data.num_clients=2", "server.clients_per_round=2", "server.rounds=2")


def process_groups_alive(groups: set[int]) -> list[int]:
    """PIDs of live processes in any of the process ``groups`` (zombies excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid in groups and state != "Z":
            alive.append(int(entry.name))
    return alive


def test_loopback_run_equals_the_simulator_and_leaves_no_process(tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(dump_config(tiny_config(*TWO_CLIENTS)))
    simulated = run(tiny_config(*TWO_CLIENTS), tmp_path / "sim")
    with local_deployment(2, home=tmp_path / "flower-home") as deployment:
        groups = set(deployment.pids)
        assert len(groups) == 3 and len(process_groups_alive(groups)) >= 3
        submit(deployment, config, tmp_path / "flower", nodes=2, timeout_s=900)
    assert process_groups_alive(groups) == []
    lines = (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert stable(records) == stable(simulated.records)
    for path in (tmp_path / "sim" / "final").glob("*.safetensors"):
        assert path.read_bytes() == (tmp_path / "flower" / "final" / path.name).read_bytes()


def test_a_supernode_killed_mid_run_is_dropped_and_the_round_completes(tmp_path: Path) -> None:
    overrides = (*TWO_CLIENTS, "server.min_clients=1", "server.reply_timeout_s=30")
    config = tmp_path / "two.toml"
    config.write_text(dump_config(tiny_config(*overrides)))
    out = tmp_path / "flower"
    with local_deployment(2, home=tmp_path / "flower-home") as deployment:
        worker = threading.Thread(target=submit, args=(deployment, config, out, 2, 900))
        worker.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and _recorded_rounds(out) < 1:
            time.sleep(0.5)
        victim = deployment.processes[2]  # SuperNode 1 (the SuperLink is first)
        os.killpg(victim.pid, signal.SIGKILL)
        worker.join(timeout=900)
        assert not worker.is_alive()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["round"] == 2 and last["skipped"] is None
    dropped = {d["client"] for d in last["dropped"]}
    assert len(dropped) == 1 and last["accepted"] and dropped.isdisjoint(last["accepted"])
    assert (out / "summary.json").exists()


def _recorded_rounds(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    rounds = [0]
    for line in path.read_text().splitlines():
        try:
            rounds.append(json.loads(line)["round"])
        except json.JSONDecodeError:  # the line being written
            break
    return max(rounds)
