"""Validation, sampling, seeds, client state and checkpoints."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fedllm.client.store import ClientStateStore
from fedllm.client.train import batch_indices, count_local_steps, lr_factor
from fedllm.config import ClientConfig
from fedllm.federation.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedllm.seeding import derive_seed
from fedllm.server.sampling import sample_clients
from fedllm.server.validate import find_problem
from fedllm.types import ClientUpdate

REFERENCE = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}


def update(**delta: torch.Tensor) -> ClientUpdate:
    full = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    full.update(delta)
    return ClientUpdate("c", full, 10)


def test_validation_accepts_a_good_update() -> None:
    assert find_problem(update(), REFERENCE) is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (update(a=torch.full((2, 3), float("nan"))), "NaN or Inf"),
        (update(b=torch.tensor([1.0, float("inf"), 0.0, 0.0])), "NaN or Inf"),
        (update(a=torch.ones(3, 2)), "shape [3, 2], expected [2, 3]"),
        (update(b=torch.ones(4, dtype=torch.float64)), "dtype torch.float64"),
        (update(c=torch.ones(1)), "unexpected key"),
        (ClientUpdate("c", {"a": torch.ones(2, 3)}, 10), "missing 1 key"),
        (
            ClientUpdate("c", {"a": torch.ones(2, 3), "b": torch.ones(4)}, -1),
            "negative example count",
        ),
    ],
)
def test_validation_names_the_problem(bad: ClientUpdate, reason: str) -> None:
    problem = find_problem(bad, REFERENCE)
    assert problem is not None and reason in problem


def test_sampling_is_seeded_and_distinct() -> None:
    clients = [f"c{i}" for i in range(10)]
    first = sample_clients(clients, 3, seed=1, round_num=4)
    assert first == sample_clients(clients, 3, seed=1, round_num=4)
    assert len(set(first)) == 3 and set(first) <= set(clients)
    draws = {tuple(sample_clients(clients, 3, seed=1, round_num=r)) for r in range(1, 20)}
    assert len(draws) > 5, "different rounds must draw different cohorts"
    assert sample_clients(clients, 20, seed=1, round_num=1) == clients


def test_sampling_is_uniform_over_many_rounds() -> None:
    clients = [f"c{i}" for i in range(5)]
    counts = dict.fromkeys(clients, 0)
    for r in range(2000):
        for cid in sample_clients(clients, 2, seed=0, round_num=r):
            counts[cid] += 1
    for count in counts.values():
        assert abs(count / 2000 - 0.4) < 0.05


def test_derived_seeds_differ_by_key() -> None:
    assert derive_seed(0, "client", 1, "a") == derive_seed(0, "client", 1, "a")
    assert derive_seed(0, "client", 1, "a") != derive_seed(0, "client", 1, "b")
    assert derive_seed(0, "x") != derive_seed(1, "x")


def test_local_steps_from_epochs() -> None:
    cfg = ClientConfig(local_steps=7, batch_size=4, grad_accum=2)
    assert count_local_steps(cfg, 100) == 7
    by_epochs = cfg.model_copy(update={"local_epochs": 1.0})
    assert count_local_steps(by_epochs, 100) == 13  # 25 batches / 2 per step, rounded up


def test_batches_cover_each_epoch_once() -> None:
    batches = batch_indices(10, 4, torch.Generator().manual_seed(0))
    epoch = [next(batches) for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(i for b in epoch for i in b) == list(range(10))


def test_lr_schedules() -> None:
    cfg = ClientConfig(lr_schedule="linear", warmup_steps=2)
    assert lr_factor(0, 10, cfg) == pytest.approx(1 / 3)
    assert lr_factor(2, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(9, 10, cfg) == pytest.approx(1 - 7 / 8)
    cosine = ClientConfig(lr_schedule="cosine")
    assert lr_factor(0, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(5, 10, cosine) == pytest.approx(0.5)


def test_client_store_round_trip_and_snapshot(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path / "clients")
    slot = store.slot("scaffold")  # a plug-in's state: saved and restored with the rest
    assert store.get("a") is None
    store.put("a", {"w": torch.ones(3)})
    slot.put("a", {"c": torch.ones(2)})
    store.snapshot(tmp_path / "snap")
    store.put("a", {"w": torch.zeros(3)})  # must not change the snapshot
    store.put("b", {"w": torch.ones(1)})
    slot.put("a", {"c": torch.zeros(2)})
    slot.put("b", {"c": torch.ones(1)})
    store.restore(tmp_path / "snap")
    assert store.clients() == ["a"]
    restored = store.get("a")
    assert restored is not None and torch.equal(restored["w"], torch.ones(3))
    assert slot.clients() == ["a"]
    control = slot.get("a")
    assert control is not None and torch.equal(control["c"], torch.ones(2))


def test_checkpoint_round_trip_prunes_and_restores_rng(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for r in (1, 2, 3):
        save_checkpoint(
            root, r, {"global": {"w": torch.full((2,), float(r))}}, {"r": r}, None, keep=2
        )
    assert [p.name for p in list_checkpoints(root)] == ["round-00002", "round-00003"]
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(root, 4, {"global": {"w": torch.zeros(1)}}, {}, None, keep=2)
    expected = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(99)
    ckpt = load_checkpoint(list_checkpoints(root)[-1])
    restore_rng(ckpt)
    assert (torch.rand(1).item(), random.random(), np.random.rand()) == expected
    assert ckpt.round == 4
    assert json.loads((root / "round-00004" / "state.json").read_text())["round"] == 4
