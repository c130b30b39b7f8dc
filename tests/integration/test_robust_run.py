"""A robust aggregator in a whole run: Krum with ``[aggregator.krum] f = 1`` on the tiny
config keeps the update with the lowest Krum score (recomputed here from what the
clients sent), the round records the others as ``excluded``, and the global model moves
by the kept update. Checking such a config imports no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedllm.cli import main
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.config import load_config
from fedllm.federation.setup import prepare
from fedllm.types import ClientUpdate, Params
from tests.support.plugins import register_client_plugin
from tests.support.processes import python_stdout
from tests.support.runs import TINY

SENT: dict[tuple[int, str], Params] = {}
"""(round, client) -> the delta the client sent."""

KRUM = [
    "server.aggregator=krum",
    "aggregator.krum.f=1",  # n > 2f + 2: five clients a round
    "data.num_clients=5",
    "server.clients_per_round=5",
    "server.min_clients=5",
]


class SentRecorder(ClientPlugin):
    name = "robust_recorder"

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        SENT[(ctx.round, ctx.client_id)] = {k: v.clone() for k, v in update.delta.items()}
        return update


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_client_plugin("robust_recorder", SentRecorder)


def krum_choice(deltas: dict[str, Params], f: int) -> str:
    """Blanchard et al. 2017 on the flattened deltas: the client whose n - f - 2 nearest
    squared distances sum least."""
    ids = sorted(deltas)
    rows = np.stack(
        [
            np.concatenate([deltas[c][k].double().numpy().ravel() for k in sorted(deltas[c])])
            for c in ids
        ]
    )
    n = len(ids)
    scores = [
        sum(
            sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(n) if j != i)[: n - f - 2]
        )
        for i in range(n)
    ]
    return ids[int(np.argmin(scores))]


def test_krum_keeps_one_update_and_the_round_records_the_others(tmp_path: Path) -> None:
    SENT.clear()
    out = tmp_path / "run"
    sets = [*KRUM, "federation.algorithms=['robust_recorder']", "server.rounds=1"]
    sets.append("run.checkpoint_every=1")
    args = [a for s in sets for a in ("--set", s)]
    assert main(["run", str(TINY), *args, "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    sent = {cid: delta for (rnd, cid), delta in SENT.items() if rnd == 1}
    assert sorted(sent) == sorted(record["sampled"]) and len(sent) == 5
    kept = krum_choice(sent, f=1)
    assert sorted(record["excluded"]) == sorted(c for c in sent if c != kept)
    start = prepare(load_config(TINY, sets)).initial
    final = load_file(sorted((out / "checkpoints").iterdir())[-1] / "global.safetensors")
    for name, tensor in final.items():  # FedAvg with lr 1: the model moved by the kept delta
        moved = tensor.double() - start[name].double()
        torch.testing.assert_close(moved, sent[kept][name].double(), atol=1e-6, rtol=1e-4)


def test_a_krum_config_is_checked_without_torch() -> None:
    probe = (
        "import sys; from fedllm.config import load_config; "
        "c = load_config(sys.argv[1], sys.argv[2:]); "
        "assert c.aggregator_settings_of('krum').f == 1; "
        "print('torch' in sys.modules)"
    )
    assert python_stdout(probe, str(TINY), *KRUM).strip() == "False"
    # full fine-tuning: the product-measure check reads the rule's settings, torch-free
    full = (*KRUM, "method.kind=full", "aggregator.krum.distance=flat")
    assert python_stdout(probe, str(TINY), *full).strip() == "False"
