"""Shards (exactly k labels per client) and quantity skew (power-law and log-normal sizes)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from fedllm.config import DataConfig
from fedllm.data.partition import Partition
from fedllm.data.skew import quantity, quantity_sizes, shards
from fedllm.data.sources import DataError, Record


def _records(labels: list[str]) -> list[Record]:
    return [{"text": f"doc {i}", "category": label} for i, label in enumerate(labels)]


def _assigned(partition: Partition) -> list[int]:
    return sorted(i for rows in partition.values() for i in rows)


def _cv(sizes: list[int]) -> float:
    arr = np.asarray(sizes, dtype=np.float64)
    return float(arr.std() / arr.mean())


# ---------------------------------------------------------------- shards


@pytest.mark.parametrize(("k", "clients"), [(1, 8), (2, 5), (3, 10), (5, 3)])
def test_shards_gives_every_client_exactly_k_labels(k: int, clients: int) -> None:
    labels = [f"l{i % 8}" for i in range(800)]
    records = _records(labels)
    cfg = DataConfig(partition_by="category", num_clients=clients, labels_per_client=k)
    part = shards(records, cfg, seed=4)
    assert len(part) == clients
    holders: dict[str, list[str]] = defaultdict(list)
    for cid, rows in part.items():
        held = {labels[i] for i in rows}
        assert len(held) == k
        for label in held:
            holders[label].append(cid)
    rows = _assigned(part)
    assert len(rows) == len(set(rows))
    # a drawn label is handed out whole, in near-equal shards; the others are dropped
    assert rows == [i for i, label in enumerate(labels) if label in holders]
    for label, cids in holders.items():
        shard_sizes = [sum(labels[i] == label for i in part[cid]) for cid in cids]
        assert sum(shard_sizes) == 100
        assert max(shard_sizes) - min(shard_sizes) <= 1


def test_shards_with_clients_at_least_labels_uses_every_label() -> None:
    labels = [f"l{i % 6}" for i in range(300)]
    cfg = DataConfig(partition_by="category", num_clients=6, labels_per_client=2)
    part = shards(_records(labels), cfg, seed=0)
    assert _assigned(part) == list(range(300))


def test_shards_is_seeded() -> None:
    records = _records([f"l{i % 8}" for i in range(400)])
    cfg = DataConfig(partition_by="category", num_clients=4, labels_per_client=2)
    assert shards(records, cfg, seed=1) == shards(records, cfg, seed=1)
    assert shards(records, cfg, seed=1) != shards(records, cfg, seed=2)


def test_shards_more_labels_per_client_than_labels_is_a_clear_error() -> None:
    cfg = DataConfig(partition_by="category", num_clients=2, labels_per_client=5)
    with pytest.raises(DataError) as err:
        shards(_records(["a", "b", "c"] * 4), cfg, seed=0)
    message = str(err.value)
    assert "data.labels_per_client = 5" in message
    assert "3 distinct values of 'category'" in message
    assert "choose 1 to 3" in message


def test_shards_label_with_too_few_records_is_a_clear_error() -> None:
    labels = ["rare"] + ["common"] * 50  # every client must hold both labels
    cfg = DataConfig(partition_by="category", num_clients=5, labels_per_client=2)
    with pytest.raises(DataError, match=r"'rare', has 1.*lower data\.num_clients"):
        shards(_records(labels), cfg, seed=0)


# ---------------------------------------------------------------- quantity


def test_quantity_powerlaw_sizes_follow_the_rank_size_law() -> None:
    n, clients, exponent, floor = 1000, 5, 1.2, 4
    cfg = DataConfig(num_clients=clients, quantity_exponent=exponent, min_client_examples=floor)
    part = quantity(_records(["x"] * n), cfg, seed=0)
    sizes = [len(rows) for rows in part.values()]
    weights = [(k + 1) ** -exponent for k in range(clients)]
    expected = [floor + (n - floor * clients) * w / sum(weights) for w in weights]
    assert sum(sizes) == n
    assert sizes == sorted(sizes, reverse=True)  # client-000 is the largest
    assert all(abs(s - e) < 1 for s, e in zip(sizes, expected, strict=True))


@pytest.mark.parametrize("skew", ["powerlaw", "lognormal"])
def test_quantity_without_skew_gives_equal_sizes(skew: str) -> None:
    cfg = DataConfig(num_clients=7, quantity_skew=skew, quantity_exponent=0.0, quantity_sigma=0.0)
    sizes = [len(rows) for rows in quantity(_records(["x"] * 703), cfg, seed=3).values()]
    assert sum(sizes) == 703
    assert max(sizes) - min(sizes) <= 1


def test_quantity_lognormal_large_sigma_gives_highly_unequal_sizes() -> None:
    def cv(sigma: float) -> float:
        cfg = DataConfig(num_clients=20, quantity_skew="lognormal", quantity_sigma=sigma)
        return _cv([len(rows) for rows in quantity(_records(["x"] * 5000), cfg, 5).values()])

    assert cv(3.0) > 1.0
    assert cv(3.0) > cv(0.5) > cv(0.0) == 0.0


def test_quantity_gives_every_client_the_minimum_when_possible() -> None:
    rng = np.random.default_rng(0)
    steep = DataConfig(num_clients=10, quantity_exponent=5.0, min_client_examples=6)
    sizes = quantity_sizes(200, steep, rng)
    assert min(sizes) == 6 and sum(sizes) == 200
    scarce = DataConfig(num_clients=10, quantity_exponent=5.0, min_client_examples=6)
    sizes = quantity_sizes(35, scarce, rng)  # 10 x 6 > 35: everyone gets 35 // 10
    assert min(sizes) == 3 and sum(sizes) == 35


def test_quantity_keeps_labels_iid_and_covers_every_record() -> None:
    labels = [f"l{i % 4}" for i in range(4000)]
    cfg = DataConfig(num_clients=4, quantity_exponent=1.0)
    part = quantity(_records(labels), cfg, seed=2)
    assert _assigned(part) == list(range(4000))
    for rows in part.values():
        shares = Counter(labels[i] for i in rows)
        assert all(abs(shares[f"l{j}"] / len(rows) - 0.25) < 0.06 for j in range(4))


def test_quantity_is_seeded() -> None:
    records = _records(["x"] * 100)
    cfg = DataConfig(num_clients=3, quantity_skew="lognormal")
    assert quantity(records, cfg, seed=1) == quantity(records, cfg, seed=1)
    assert quantity(records, cfg, seed=1) != quantity(records, cfg, seed=2)


def test_quantity_more_clients_than_records_is_an_error() -> None:
    with pytest.raises(DataError, match="num_clients = 5 exceeds the 3 records"):
        quantity(_records(["a", "b", "c"]), DataConfig(num_clients=5), 0)
