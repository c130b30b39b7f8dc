"""fedllm on a real Flower deployment on loopback: a SuperLink, two SuperNodes, `flwr run`.

The same config and seed give the simulator's metrics and final tensors (through the
CLI, across a resume, with SCAFFOLD's client state on the nodes), a node killed mid-run
is dropped, and every process a deployment started is gone afterwards. (FedAvg LoRA,
SCAFFOLD and personal parameters also go through Flower's own encoding in process in
``test_flower_engine.py``.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from fedllm.cli import main
from fedllm.config import dump_config
from fedllm.deploy.link import socket_dir
from fedllm.deploy.local import local_deployment, node_status, submit
from fedllm.federation.runner import run
from tests.support.flower import SECAGG_THREE_NODES
from tests.support.processes import process_groups_alive, processes_mentioning
from tests.support.runs import stable, tiny_config

TWO_CLIENTS = ("data.num_clients=2", "server.clients_per_round=2", "server.rounds=2")


def test_a_supernode_killed_mid_run_is_dropped_and_the_round_completes(tmp_path: Path) -> None:
    """Node 1's SuperNode is killed after round 1; round 2 goes on with node 0, and every
    process the deployment started (the SuperNodes' workers included) is gone after."""
    overrides = (*TWO_CLIENTS, "server.min_clients=1", "server.reply_timeout_s=30")
    config = tiny_config(*overrides)
    out = tmp_path / "flower"
    settings = {"out": str(out), "nodes": 2}
    with local_deployment(2, home=tmp_path / "flower-home") as deployment:
        groups = set(deployment.pids)
        # the SuperLink, two SuperNodes, and the SuperExec that runs each one's apps
        assert len(groups) == 6 and len(process_groups_alive(groups)) == 6
        worker = threading.Thread(target=submit, args=(deployment, config, settings, 900))
        worker.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and _recorded_rounds(out) < 1:
            time.sleep(0.5)
        victim = deployment.supernodes[1]
        os.killpg(victim.pid, signal.SIGKILL)
        worker.join(timeout=900)
        assert not worker.is_alive()
        port = deployment.superlink.rsplit(":", 1)[1]
        assert processes_mentioning(port)  # the SuperLink and its apps name its port
    assert process_groups_alive(groups) == []
    # right away, also the groups their children made (flwr-serverapp, flower-superexec)
    assert processes_mentioning(port) == []
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["round"] == 2 and last["skipped"] is None
    dropped = {d["client"] for d in last["dropped"]}
    assert len(dropped) == 1 and last["accepted"] and dropped.isdisjoint(last["accepted"])
    assert (out / "summary.json").exists()


def test_fedllm_run_on_flower_then_resume_keeps_the_nodes_state(tmp_path: Path) -> None:
    """`fedllm run --set runtime.engine=flower` for one round, `fedllm resume --rounds 2`
    on a fresh deployment: SCAFFOLD's control variates stayed on the nodes (in the run
    directory's nodes/), so the result equals two rounds on the simulator; no SuperNode
    or node worker (their command lines name the run's nodes/ folder) outlives either."""
    overrides = (*TWO_CLIENTS, 'client.drift_correction="scaffold"')
    simulated = run(tiny_config(*overrides), tmp_path / "sim")
    config = tmp_path / "scaffold.toml"
    config.write_text(dump_config(tiny_config(*overrides, "server.rounds=1")))
    out = tmp_path / "flower"
    flower = ["--set", 'runtime.engine="flower"', "--out", str(out), "--quiet"]
    assert main(["run", str(config), *flower]) == 0
    assert _recorded_rounds(out) == 1 and (out / "nodes").is_dir()
    assert processes_mentioning(str(out / "nodes")) == []
    assert main(["resume", str(out), "--rounds", "2", "--quiet"]) == 0
    assert processes_mentioning(str(out / "nodes")) == []
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stable(records) == stable(simulated.records)
    for path in (tmp_path / "sim" / "final").glob("*.safetensors"):
        assert path.read_bytes() == (out / "final" / path.name).read_bytes()


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


def test_secure_aggregation_on_flower_gives_the_simulators_model(tmp_path: Path) -> None:
    """SecAgg+'s four phases over a SuperLink and three SuperNodes (key material from
    the nodes' CSPRNG, so the masks differ from the simulator's): the same losses, and
    the same model within one quantisation step."""
    from safetensors.torch import load_file

    from fedllm.secure.secagg.ring import RingSpec

    overrides = SECAGG_THREE_NODES
    simulated = run(tiny_config(*overrides), tmp_path / "sim")
    config = tmp_path / "secagg.toml"
    config.write_text(dump_config(tiny_config(*overrides)))
    out = tmp_path / "flower"
    flower = ["--set", 'runtime.engine="flower"', "--out", str(out), "--quiet"]
    assert main(["run", str(config), *flower]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["secagg"]["unmasked"] == 3 and records[-1]["skipped"] is None
    assert records[-1]["train_loss"] == simulated.records[-1]["train_loss"]
    step = RingSpec(48, 0.5, 3).step
    a = load_file(tmp_path / "sim" / "final" / "adapter_model.safetensors")
    b = load_file(out / "final" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= step + 1e-6 * a[key].abs().max().item()


def test_homomorphic_aggregation_on_flower_with_key_files(tmp_path: Path) -> None:
    """`fedllm he-keys`, then CKKS's two phases over a SuperLink and two SuperNodes: the
    nodes read the secret context, the server only the public one; the simulator's
    losses, and its model within CKKS's error."""
    from safetensors.torch import load_file

    keys = tmp_path / "keys"
    assert main(["he-keys", str(keys)]) == 0
    overrides = (
        *TWO_CLIENTS,
        "server.rounds=1",
        "he.enabled=true",
        f"he.secret_context='{keys / 'he-secret.ctx'}'",
        f"he.public_context='{keys / 'he-public.ctx'}'",
    )
    simulated = run(
        tiny_config(*TWO_CLIENTS, "server.rounds=1", "he.enabled=true"), tmp_path / "sim"
    )
    config = tmp_path / "he.toml"
    config.write_text(dump_config(tiny_config(*overrides)))
    out = tmp_path / "flower"
    flower = ["--set", 'runtime.engine="flower"', "--out", str(out), "--quiet"]
    assert main(["run", str(config), *flower]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["he"]["clients"] == 2 and records[-1]["skipped"] is None
    assert records[-1]["train_loss"] == simulated.records[-1]["train_loss"]
    a = load_file(tmp_path / "sim" / "final" / "adapter_model.safetensors")
    b = load_file(out / "final" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_ctrl_c_on_a_flower_run_says_so_and_leaves_no_process(tmp_path: Path) -> None:
    """SIGINT during `fedllm run --set runtime.engine=flower`: it says it is stopping the
    deployment, exits 130, and right then nothing it started runs (issue 26: 16 s of
    silence, then orphans for 15-30 s)."""
    import subprocess
    import sys

    from tests.support.runs import TINY

    out = tmp_path / "flower"
    command = [sys.executable, "-m", "fedllm.cli", "run", str(TINY), "--out", str(out)]
    command += ["--set", 'runtime.engine="flower"', "--set", "server.rounds=50", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not processes_mentioning(str(out / "nodes")):
        time.sleep(0.2)  # the SuperNodes are up (their node config names the folder)
    assert processes_mentioning(str(out / "nodes"))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "stopping the deployment" in err
    assert processes_mentioning(str(out)) == []


MARKER = "ACME-CONFIDENTIAL-patient-4711"


def test_a_nodes_errors_reach_the_server_as_categories_and_its_limits_as_refusals(
    tmp_path: Path,
) -> None:
    """The review's findings on a real deployment. A node whose own data file has a
    malformed line naming a patient joins with the others: the server records only
    "data error on the node" (admission.json) and the marker appears nowhere on the
    server's side. A node whose owner set max-rounds=1 refuses round 2: the round
    records that refusal as its reason, not an update from it."""
    clinic = tmp_path / "org-secret-clinic.jsonl"
    good = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": MARKER, "content": "x"}]}
    clinic.write_text("".join(json.dumps(r) + "\n" for r in [good, good, good, bad, good]))
    config = tiny_config(*TWO_CLIENTS, "server.min_clients=1", "server.reply_timeout_s=120")
    out = tmp_path / "flower"
    with local_deployment(1, home=tmp_path / "flower-home") as deployment:
        deployment.start_supernode(1, node_config={"max-rounds": "1"})
        deployment.start_supernode(2, node_config={"data": str(clinic), "client": "clinic"})
        deadline = time.monotonic() + 60
        while len(node_status(deployment)) < 3 and time.monotonic() < deadline:
            time.sleep(1)
        submit(deployment, config, {"out": str(out), "nodes": 2}, 900)
        clinic_log = "".join(p.read_text() for p in deployment.state_dirs[2].glob("*.log"))
        sockets = _worker_sockets(deployment.state_dirs[:2])  # the clinic's worker has quit
        assert len(sockets) == 2 and all(path.exists() for path in sockets)  # workers live
    assert not any(path.exists() for path in sockets)  # the stop removed what it killed
    server_side = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert MARKER not in server_side and "org-secret-clinic" not in server_side
    assert MARKER in clinic_log  # the detail stays on the node
    admission = json.loads((out / "admission.json").read_text())
    [refused] = admission["refused"]
    assert refused["reason"].endswith("'data error on the node'>")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    limited = sorted(admission["admitted"])[1]  # node 1 answers for the second client
    assert limited in records[1]["accepted"]
    [dropped] = records[2]["dropped"]
    assert dropped["client"] == limited
    assert "node policy: max-rounds = 1" in dropped["reason"]
    assert limited not in records[2]["accepted"] and records[2]["skipped"] is None


def _worker_sockets(state_dirs: list[Path]) -> list[Path]:
    """The socket of each worker the nodes keeping their state in ``state_dirs`` started
    (named by the spec file each start writes)."""
    return [
        socket_dir(state) / f"{spec.stem}.sock"
        for state in state_dirs
        for spec in state.glob("worker-*.json")
    ]
