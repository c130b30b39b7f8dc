"""FLTrust, FoolsGold, FLAME, centered clipping, update screening and update forensics
in whole tiny runs: the model moves by what each rule's formula makes of the updates
the clients sent (recomputed here from the recorded deltas and the round's record),
FoolsGold's histories and centered clipping's previous result survive a resume bit for
bit, screening counts its flags against a simulated attacker, and the kept updates read
back equal what was sent and aggregated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedllm.cli import main
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.config import load_config
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.types import ClientUpdate, Params
from tests.support.plugins import register_client_plugin
from tests.support.processes import python_stdout
from tests.support.runs import TINY, InterruptAfter, stable

SENT: dict[tuple[int, str], Params] = {}
"""(round, client) -> the delta the client sent."""

RECORDED = "federation.algorithms=['defenses_recorder']"
ALL_FOUR = ["data.num_clients=4", "server.clients_per_round=4", "run.checkpoint_every=1"]


class SentRecorder(ClientPlugin):
    name = "defenses_recorder"

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        SENT[(ctx.round, ctx.client_id)] = {k: v.clone() for k, v in update.delta.items()}
        return update


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_client_plugin("defenses_recorder", SentRecorder)


def run_tiny(out: Path, *sets: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the tiny config with ``sets``; its round records (0 first) and summary."""
    SENT.clear()
    args = [a for s in sets for a in ("--set", s)]
    assert main(["run", str(TINY), *args, "--out", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((out / "summary.json").read_text())


def rows(deltas: dict[str, Params], ids: list[str]) -> np.ndarray:
    """The deltas of ``ids``, flattened in the state's key order (float64)."""
    names = list(deltas[ids[0]])
    return np.stack(
        [np.concatenate([deltas[c][k].double().numpy().ravel() for k in names]) for c in ids]
    )


def moved(out: Path, sets: list[str]) -> np.ndarray:
    """How far round 1 moved the global model (FedAvg at lr 1: the aggregate), flat."""
    start = prepare(load_config(TINY, sets)).initial
    final = load_file(out / "checkpoints" / "round-00001" / "global.safetensors")
    return np.concatenate([(final[k].double() - start[k].double()).numpy().ravel() for k in final])


def sent_in(round_num: int) -> dict[str, Params]:
    return {cid: delta for (r, cid), delta in SENT.items() if r == round_num}


def test_fltrust_moves_the_model_by_the_trust_weighted_rescaled_updates(tmp_path: Path) -> None:
    sets = [
        "server.aggregator=fltrust",
        "public.source=chitchat",
        "aggregator.fltrust.root_steps=2",
        "server.rounds=1",
        RECORDED,
        *ALL_FOUR,
    ]
    records, _ = run_tiny(tmp_path / "run", *sets)
    record = records[1]
    trust, root_norm = record["fltrust"]["trust"], record["fltrust"]["root_norm"]
    ids = sorted(sent_in(1))
    assert sorted(trust) == ids and root_norm > 0
    assert sorted(record.get("excluded", [])) == sorted(c for c in ids if trust[c] == 0)
    x = rows(sent_in(1), ids)
    ts = np.array([trust[c] for c in ids])
    rescaled = x * (root_norm / np.linalg.norm(x, axis=1))[:, None]
    expected = (ts[:, None] * rescaled).sum(axis=0) / ts.sum()
    np.testing.assert_allclose(moved(tmp_path / "run", sets), expected, atol=1e-6, rtol=1e-4)


def test_flame_moves_the_model_by_the_clipped_mean_of_the_admitted(tmp_path: Path) -> None:
    sets = [
        "server.aggregator=flame",
        "aggregator.flame.noise=0.0",
        "server.rounds=1",
        RECORDED,
        *ALL_FOUR,
    ]
    records, _ = run_tiny(tmp_path / "run", *sets)
    record = records[1]
    admitted = record["flame"]["admitted"]
    ids = sorted(sent_in(1))
    assert sorted(admitted + record.get("excluded", [])) == ids and len(admitted) >= 3
    x = rows(sent_in(1), ids)
    e = np.linalg.norm(x, axis=1)
    s = float(np.median(e))
    assert record["flame"]["clip"] == pytest.approx(s, rel=1e-6)
    kept = [x[ids.index(c)] * min(1.0, s / e[ids.index(c)]) for c in admitted]
    np.testing.assert_allclose(
        moved(tmp_path / "run", sets), np.mean(kept, axis=0), atol=1e-6, rtol=1e-4
    )


def test_foolsgold_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """Three clients of four a round: histories differ; a crash after round 2."""
    sets = [
        "server.aggregator=foolsgold",
        "server.rounds=3",
        "data.num_clients=4",
        "server.clients_per_round=3",
        "run.checkpoint_every=1",
    ]
    config = load_config(TINY, sets)
    whole = run(config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    for record in whole.records[1:]:
        assert sorted(record["foolsgold"]["weights"]) == sorted(record["accepted"])
    last = "checkpoints/round-00003"
    for group in ("global", "foolsgold"):
        a = load_file(tmp_path / "whole" / last / f"{group}.safetensors")
        b = load_file(tmp_path / "cut" / last / f"{group}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def paper_centered_clip(x: np.ndarray, tau: float, iterations: int, v: np.ndarray) -> np.ndarray:
    """Karimireddy et al. 2021 with equal weights: L steps of v <- v + mean_i (x_i - v)
    min(1, tau / ||x_i - v||) from v."""
    for _ in range(iterations):
        gaps = x - v
        v = v + np.mean(gaps * np.minimum(1.0, tau / np.linalg.norm(gaps, axis=1))[:, None], 0)
    return v


def test_centered_clip_starts_from_the_previous_round_and_resumes_bit_for_bit(
    tmp_path: Path,
) -> None:
    """Three clients of four a round (the cohorts differ), tau under the updates'
    spread (about 0.5 on the tiny model: the start matters). The model moves by the
    paper's v_L each round, v_0 = 0 in round 1 and the previous v_L after; a crash after
    round 2 resumes to the same records and checkpoints."""
    tau = 0.1
    sets = [
        "server.aggregator=centered_clip",
        f"aggregator.centered_clip.tau={tau}",
        "server.weighting=uniform",
        "server.rounds=3",
        "data.num_clients=4",
        "server.clients_per_round=3",
        "run.checkpoint_every=1",
        RECORDED,
    ]
    config = load_config(TINY, sets)
    SENT.clear()
    whole = run(config, tmp_path / "whole")
    v = np.zeros(0)
    for record in whole.records[1:]:
        ids = sorted(sent_in(record["round"]))
        assert sorted(record["accepted"]) == ids and len(ids) == 3
        x = rows(sent_in(record["round"]), ids)
        v = paper_centered_clip(x, tau, 3, np.zeros_like(x[0]) if v.size == 0 else v)
        start = record["centered_clip"]
        assert start == (
            {"start": "zero"}
            if record["round"] == 1
            else {"start": "previous", "from_round": record["round"] - 1}
        )
    assert np.linalg.norm(v - x.mean(axis=0)) > 1e-3  # clipped: not the mean
    last = "checkpoints/round-00003"
    centre = load_file(tmp_path / "whole" / last / "centered_clip.safetensors")["centre"]
    np.testing.assert_allclose(centre.double().numpy(), v, atol=1e-6, rtol=1e-4)
    before = load_file(tmp_path / "whole" / "checkpoints" / "round-00002" / "global.safetensors")
    after = load_file(tmp_path / "whole" / last / "global.safetensors")
    step = np.concatenate([(after[k].double() - before[k].double()).numpy().ravel() for k in after])
    np.testing.assert_allclose(step, v, atol=1e-6, rtol=1e-4)  # FedAvg at lr 1: v_L

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    for group in ("global", "centered_clip"):
        a = load_file(tmp_path / "whole" / last / f"{group}.safetensors")
        b = load_file(tmp_path / "cut" / last / f"{group}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kept_updates_are_what_was_sent_and_what_was_aggregated(tmp_path: Path) -> None:
    sets = ["server.keep_updates=true", "server.rounds=1", RECORDED, *ALL_FOUR]
    records, _ = run_tiny(tmp_path / "run", *sets)
    kept = load_file(tmp_path / "run" / "updates" / "round_1.safetensors")
    sidecar = json.loads((tmp_path / "run" / "updates" / "round_1.json").read_text())
    sent = sent_in(1)
    assert sorted(sidecar["clients"]) == sorted(sent) == sorted(records[1]["accepted"])
    for cid, delta in sent.items():
        for name, tensor in delta.items():
            assert torch.equal(kept[f"update/{cid}/{name}"], tensor)
    names = list(next(iter(sent.values())))
    aggregate = np.concatenate([kept[f"aggregate/{n}"].double().numpy().ravel() for n in names])
    np.testing.assert_allclose(moved(tmp_path / "run", sets), aggregate, atol=1e-6, rtol=1e-5)
    data = prepare(load_config(TINY, sets)).data
    assert data is not None  # the weights: each client's training examples
    assert sidecar["weights"] == [len(data.clients[c].train) for c in sidecar["clients"]]
    assert "malicious" not in sidecar and sidecar["excluded"] == []


def test_screening_flags_a_scaling_attacker_and_counts_it(tmp_path: Path) -> None:
    sets = [
        "algorithm.screening.enabled=true",
        "algorithm.screening.action='exclude'",
        "attack.update='scale'",
        "attack.fraction=0.25",
        "attack.scale.factor=50.0",
        "server.keep_updates=true",
        "server.rounds=2",
        *ALL_FOUR,
    ]
    records, summary = run_tiny(tmp_path / "run", *sets)
    for record in records[1:]:
        screening = record["screening"]
        assert screening["tp"] == 1 and screening["fn"] == 0
        assert set(screening["flagged"]) <= set(record["excluded"])
        sidecar = json.loads(
            (tmp_path / "run" / "updates" / f"round_{record['round']}.json").read_text()
        )
        attacker = [c for c, bad in sidecar["malicious"].items() if bad]
        assert len(attacker) == 1 and attacker[0] in screening["flagged"]
        assert sidecar["flagged"] == screening["flagged"]
        assert set(screening["features"][attacker[0]]) == {"norm", "top", "concentration"}
    totals = {k: sum(r["screening"][k] for r in records[1:]) for k in ("tp", "fp", "fn", "tn")}
    part = summary["screening"]
    assert {k: part[k] for k in totals} == totals
    assert part["tpr"] == 1.0 and part["fpr"] == totals["fp"] / (totals["fp"] + totals["tn"])


def test_the_new_settings_are_checked_without_torch() -> None:
    probe = (
        "import sys; from fedllm.config import load_config; "
        "c = load_config(sys.argv[1], sys.argv[2:]); "
        "assert c.aggregator_settings_of('fltrust').root_steps == 2; "
        "cc = c.aggregator_settings_of('centered_clip'); "
        "assert (cc.start, cc.tau) == ('previous', 0.5); "
        "load_config(sys.argv[1], ['server.aggregator=centered_clip']); "
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    sets = [
        "server.aggregator=fltrust",
        "public.source=chitchat",
        "aggregator.fltrust.root_steps=2",
        "algorithm.screening.enabled=true",
        "server.keep_updates=true",
        "aggregator.flame.noise=0.01",
        "aggregator.centered_clip.tau=0.5",
    ]
    assert python_stdout(probe, str(TINY), *sets).strip() == "False False"
