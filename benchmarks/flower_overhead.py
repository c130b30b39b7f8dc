"""Flower overhead: a fedllm round on a loopback Flower deployment vs the simulator,
vs Flower's own floor (a no-op app doing the same work) on the same deployment, and
bytes on the wire vs the payload.

Figures, measured in one run on the same machine:
- the simulator's per-round wall time (``time_s.round``) for the config, and its parts
  (``time_s.train``: the clients' training; ``time_s.eval``: scoring; the rest:
  aggregation, checkpoint);
- the same config on a loopback SuperLink with one SuperNode per client;
- on the same deployment, a no-op Flower app (``noop_app.py``, written beside the
  fedllm app) that per round makes the two exchanges a fedllm round makes (train, then
  evaluate), each a message of the payload's size to every node and one of the same
  size back, and does the simulator's work as sleeps of the same length at the same
  places (the node sleeps the train and eval time, the server the rest): Flower's own
  cost per round (the SuperNodes' 3 s polling, the ServerApp's 3 s polling for
  replies, a ClientApp process per message, the transport) plus the work, with the
  same timing against the polls. (Without the sleeps the work's end falls at a random
  point between two of the ServerApp's polls: up to 3 s per exchange that are Flower's,
  not fedllm's.)
fedllm's Flower round minus that no-op round is what fedllm adds on top of Flower and of
the work (target for SmolLM2 LoRA: at most 0.5 s). One client per round (``--clients
1``, the default) keeps the node's work equal to the simulator's; with several, the
simulator trains them one after the other and the nodes in parallel. Bytes on the wire:
the protobuf size of a train message and its reply (Flower's own serialisation) over
the fedllm payload (target: within 5%).

Usage: python -m benchmarks.flower_overhead [--model tiny|smollm2-135m] [--rounds 4]
       [--clients 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
from flwr.app import Message as FlowerMessage
from flwr.app import Metadata
from flwr.common import serde

from benchmarks.common import write_result
from fedllm.config import Config, load_config
from fedllm.deploy.local import APP_PYPROJECT, LocalDeployment, local_deployment, submit
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare
from fedllm.message import Message
from fedllm.runtime.flower.records import to_records
from fedllm.wire import encode_message

ROOT = Path(__file__).resolve().parents[1]

NOOP_APP = '''\
"""A no-op Flower app: per round, a message of PAYLOAD bytes to every node and one back,
for the train and the evaluate exchange; the node sleeps the phase's work, the server
the rest of the round's."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server_app = ServerApp()
client_app = ClientApp()


def payload(size: int) -> RecordDict:
    return RecordDict({"p": ArrayRecord({"x": Array(np.zeros(size, dtype=np.uint8))})})


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = list(grid.get_node_ids())
    while len(nodes) < int(cfg["nodes"]):
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    rounds = []
    for r in range(int(cfg["rounds"])):
        start = time.perf_counter()
        for phase in ("train", "evaluate"):  # a fedllm round: train, then score
            size = int(cfg["payload"])
            kind = MessageType.TRAIN
            sent = [
                Message(payload(size), dst_node_id=n, message_type=kind, group_id=phase)
                for n in nodes
            ]
            replies = list(grid.send_and_receive(sent))
            errors = [m.error.reason for m in replies if m.has_error()]
            if errors or len(replies) != len(nodes):
                raise RuntimeError(f"{len(replies)} of {len(nodes)} replies; errors: {errors}")
        time.sleep(float(cfg["server-s"]))
        rounds.append(time.perf_counter() - start)
    Path(str(cfg["out"])).write_text(json.dumps({"round_s": rounds}))


@client_app.train()
def train(message: Message, context: Context) -> Message:
    size = message.content.array_records["p"]["x"].numpy().size
    time.sleep(float(context.run_config[f"{message.metadata.group_id}-s"]))
    return Message(payload(size), reply_to=message)
'''

NOOP_PYPROJECT = APP_PYPROJECT.replace("fedllm.deploy.apps:server_app", "noop_app:server_app")
NOOP_PYPROJECT = NOOP_PYPROJECT.replace("fedllm.deploy.node_app:client_app", "noop_app:client_app")
NOOP_PYPROJECT = NOOP_PYPROJECT.replace('name = "fedllmapp"', 'name = "noopapp"')
NOOP_PYPROJECT = NOOP_PYPROJECT.replace(
    'nodes = 1\ntoken = ""\nresume-rounds = 0\n',
    "nodes = 1\nrounds = 1\npayload = 1\ntrain-s = 0.0\nevaluate-s = 0.0\nserver-s = 0.0\n",
)

assert "fedllm.deploy" not in NOOP_PYPROJECT, "the no-op app must not run fedllm's components"


def noop_rounds(
    deployment: LocalDeployment,
    nodes: int,
    rounds: int,
    payload: int,
    work: dict[str, float],
    out: Path,
) -> list[float]:
    """Per-round seconds of the no-op app on ``deployment`` (payload bytes each way, the
    ``work`` seconds slept: ``train-s`` and ``evaluate-s`` on the node, ``server-s`` on
    the server)."""
    app = deployment.home / "noop"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(NOOP_PYPROJECT)
    (app / "noop_app.py").write_text(NOOP_APP)
    settings = {"out": str(out), "nodes": nodes, "rounds": rounds, "payload": payload, **work}
    run_config = deployment.home / "noop-config.toml"
    run_config.write_text(tomli_w.dumps(settings))
    log = deployment.home / "noop.log"
    with log.open("wb") as sink:
        subprocess.run(
            ["flwr", "run", str(app), "local", "--stream", "--run-config", str(run_config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=deployment.env(),
            timeout=1800,
            check=True,
        )
    if not out.exists():
        raise RuntimeError(
            f"the no-op app wrote no result; its log ends:\n{log.read_text()[-3000:]}"
        )
    times: list[float] = json.loads(out.read_text())["round_s"]
    return times


def wire_bytes(message: Message, phase: str) -> int:
    """Bytes of ``message`` as Flower serialises it (protobuf), metadata included."""
    metadata = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    flower = FlowerMessage(metadata=metadata, content=to_records(message, phase))
    return int(serde.message_to_proto(flower).ByteSize())


def bytes_on_the_wire(config: Config) -> dict[str, Any]:
    """Protobuf bytes of a broadcast and of an update-sized reply vs their payload."""
    ws = prepare(config, with_data=False)
    message = Message(arrays=ws.initial, config={"round": 1})
    payload = len(encode_message(message))
    wire = wire_bytes(message, "train")
    return {"payload_bytes": payload, "wire_bytes": wire, "wire_over_payload": wire / payload}


def per_round(records: list[dict[str, Any]], part: str = "round") -> list[float]:
    return [r["time_s"].get(part, 0.0) for r in records if r["round"] > 0]


def simulated_work(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per round of the simulator's training, scoring and the rest."""
    train = statistics.median(per_round(records, "train"))
    evaluate = statistics.median(per_round(records, "eval"))
    rest = statistics.median(per_round(records)) - train - evaluate
    return {"train-s": train, "evaluate-s": evaluate, "server-s": max(rest, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    overrides = [
        f'model.name="{args.model}"',
        f"data.num_clients={args.clients}",
        f"server.clients_per_round={args.clients}",
        f"server.rounds={args.rounds}",
    ]
    base = "tiny.toml" if args.model == "tiny" else "demo.toml"
    config = load_config(ROOT / "configs" / base, overrides)
    wire = bytes_on_the_wire(config)
    with tempfile.TemporaryDirectory(prefix="fedllm-bench-") as tmp:
        root = Path(tmp)
        simulated_records = run(config, root / "sim").records
        simulated = per_round(simulated_records)
        work = simulated_work(simulated_records)
        with local_deployment(args.clients, home=root / "flower") as deployment:
            out = root / "on-flower"
            submit(deployment, config, {"out": str(out), "nodes": args.clients}, 7200)
            lines = (out / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            noop = noop_rounds(
                deployment,
                args.clients,
                args.rounds,
                wire["payload_bytes"],
                work,
                root / "noop.json",
            )
    flower = per_round(records)
    transport = [r["time_s"].get("transport/train", 0.0) for r in records if r["round"] > 0]
    added = statistics.median(flower) - statistics.median(noop)
    write_result(
        f"flower_overhead_{args.model}",
        {
            "model": args.model,
            "method": config.method.kind,
            "clients": args.clients,
            "rounds": args.rounds,
            "simulator_round_s": simulated,
            "flower_round_s": flower,
            "flower_train_phase_s": transport,
            "noop_round_s": noop,
            "flower_over_simulator": statistics.median(flower) / statistics.median(simulated),
            "work_slept_s": work,
            "fedllm_added_per_round_s": added,
            "target_added_s": 0.5,
            "meets_added_target": added <= 0.5,
            **wire,
            "meets_wire_target": wire["wire_over_payload"] <= 1.05,
        },
    )


if __name__ == "__main__":
    main()
