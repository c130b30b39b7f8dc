"""Update attacks in whole runs on the tiny config: with ``attack.update = "sign_flip"``
the named client sends exactly minus what it sends in the same run without the attack,
and the global model moves by the mean of what was sent; with the colluding IPM, the
server aggregates ``-epsilon`` times the colluders' mean in their place. The rounds
record who attacked, ``summary.json`` the malicious clients. The attacks' modules and
their algorithm's checks import no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

SENT: dict[tuple[str, str], tuple[Params, int]] = {}
"""(run, client) -> the delta that left the client's plug-ins in round 1, its examples."""

RUN = {"label": ""}

ALL_CLIENTS = ["server.rounds=1", "server.clients_per_round=4", "run.checkpoint_every=1"]


class SentRecorder(ClientPlugin):
    """Runs after the attack's client half (order 100, the attack's is 99): what the
    client sends."""

    name = "attack_recorder"

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        delta = {k: v.clone() for k, v in update.delta.items()}
        SENT[(RUN["label"], ctx.client_id)] = (delta, update.num_examples)
        return update


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_client_plugin("attack_recorder", SentRecorder, order=100)


def run(tmp_path: Path, label: str, *sets: str) -> tuple[Path, list[str]]:
    RUN["label"] = label
    out = tmp_path / label
    sets = (*ALL_CLIENTS, "federation.algorithms=['attack_recorder']", *sets)
    args = [a for s in sets for a in ("--set", s)]
    assert main(["run", str(TINY), *args, "--out", str(out)]) == 0
    return out, list(sets)


def moved(out: Path, sets: list[str]) -> Params:
    """How far the run moved the global model (final minus initial)."""
    start = prepare(load_config(TINY, sets)).initial
    final = load_file(sorted((out / "checkpoints").iterdir())[-1] / "global.safetensors")
    return {k: final[k].double() - start[k].double() for k in final}


def weighted_mean(deltas: dict[str, tuple[Params, int]]) -> Params:
    total = sum(n for _, n in deltas.values())
    names = next(iter(deltas.values()))[0]
    return {k: sum(d[k].double() * n for d, n in deltas.values()) / total for k in names}


def far_apart(a: Params, b: Params) -> bool:
    """Some tensor differs by far more than the tolerance the runs are compared with."""
    return any(float((a[k] - b[k]).abs().max()) > 1e-4 for k in b)


def records(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[1]), json.loads((out / "summary.json").read_text())


def test_sign_flip_sends_exactly_minus_the_clean_update(tmp_path: Path) -> None:
    SENT.clear()
    run(tmp_path, "clean")
    out, sets = run(tmp_path, "flip", "attack.update=sign_flip", "attack.clients=['emotion']")
    clean = {c: v for (label, c), v in SENT.items() if label == "clean"}
    flip = {c: v for (label, c), v in SENT.items() if label == "flip"}
    assert sorted(flip) == sorted(clean) == ["coding", "emotion", "tech_support", "trivia"]
    for client, (delta, _) in flip.items():
        for name, tensor in delta.items():
            expected = -clean[client][0][name] if client == "emotion" else clean[client][0][name]
            assert torch.equal(tensor, expected), (client, name)
    step = moved(out, sets)
    for name, mean in weighted_mean(flip).items():  # FedAvg, lr 1: the mean of what was sent
        torch.testing.assert_close(step[name], mean, atol=1e-6, rtol=1e-4)
    assert far_apart(step, weighted_mean(clean))
    record, summary = records(out)
    assert record["attacked"] == ["emotion"]
    assert summary["update_attack"] == {
        "update": "sign_flip",
        "malicious": ["emotion"],
        "from_round": 1,
    }


def test_ipm_colluders_replace_their_updates_at_the_server(tmp_path: Path) -> None:
    SENT.clear()
    colluders = ["coding", "trivia"]
    out, sets = run(
        tmp_path,
        "ipm",
        "attack.update=ipm",
        f"attack.clients={colluders!r}",
        "attack.ipm.epsilon=2.0",
    )
    honest = {c: v for (label, c), v in SENT.items() if label == "ipm"}
    own = [honest[c][0] for c in colluders]  # what they trained, shared among them
    crafted = {k: -2.0 * sum(d[k].double() for d in own) / len(own) for k in own[0]}
    received = {c: (crafted if c in colluders else d, n) for c, (d, n) in honest.items()}
    step = moved(out, sets)
    for name, mean in weighted_mean(received).items():
        torch.testing.assert_close(step[name], mean, atol=1e-6, rtol=1e-4)
    assert far_apart(step, weighted_mean(honest))
    record, summary = records(out)
    assert record["attacked"] == colluders
    assert summary["update_attack"]["malicious"] == colluders


def test_the_update_attacks_and_their_algorithm_load_without_torch() -> None:
    """What the config reads of them (the entries, their settings, ``colluding``, the
    algorithm's switch and refusals) imports no torch."""
    probe = (
        "import sys; from fedllm.config import load_config; "
        "from fedllm.components import ALGORITHMS, ATTACKS; "
        "from fedllm.security.attacks.update import is_colluding; "
        "names = 'sign_flip scale noise free_ride alie ipm min_max min_sum'.split(); "
        "c = load_config(sys.argv[1], []); "
        "f = ALGORITHMS.get('update_attack')(); "
        "[(ATTACKS.get(n), is_colluding(n), "
        "f.refuses(c.model_copy(update={'attack': c.attack.model_copy(update={'update': n})}))) "
        "for n in names]; "
        "print(sum(ATTACKS.get(n).kind == 'update' for n in names), 'torch' in sys.modules)"
    )
    assert python_stdout(probe, str(TINY)).split() == ["8", "False"]
