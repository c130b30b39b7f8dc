"""Heterogeneity figures against hand-computed values and an independent transport LP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linprog

from fedllm.data.heterogeneity import (
    jensen_shannon,
    label_emd,
    measure_heterogeneity,
    token_counts,
)


def _kl_bits(p: list[float], q: list[float]) -> float:
    return sum(a * math.log2(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _jsd_by_hand(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    return _kl_bits(p, m) / 2 + _kl_bits(q, m) / 2


def test_jensen_shannon_hand_values() -> None:
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: 1 bit
    assert jensen_shannon([3, 1], [6, 2]) == pytest.approx(0.0, abs=1e-12)  # same, as counts
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4):
    # KL(p||m) = 1/2 log2(2/3) + 1/2 log2(2) = 0.2075187..., KL(q||m) = log2(4/3) = 0.4150375...
    assert jensen_shannon([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.3112781244591328)
    assert jensen_shannon([1, 2, 3], [3, 2, 1]) == pytest.approx(
        _jsd_by_hand([1 / 6, 2 / 6, 3 / 6], [3 / 6, 2 / 6, 1 / 6])
    )


def test_label_emd_hand_values() -> None:
    assert label_emd([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert label_emd([1, 0], [0, 1]) == pytest.approx(1.0)
    assert label_emd([2, 2], [5, 5]) == pytest.approx(0.0)
    assert label_emd([1, 1, 2], [2, 1, 1]) == pytest.approx(0.25)  # move 1/4 from c to a


def _emd_by_linear_program(p: np.ndarray, q: np.ndarray) -> float:
    """Optimal transport cost from p to q with cost 1 between distinct labels, 0 on the diagonal."""
    n = len(p)
    cost = 1.0 - np.eye(n)
    rows = np.kron(np.eye(n), np.ones(n))  # sum_j flow[i, j] = p[i]
    cols = np.kron(np.ones(n), np.eye(n))  # sum_i flow[i, j] = q[j]
    result = linprog(
        cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([p, q]), bounds=(0, None)
    )
    assert result.success
    return float(result.fun)


def test_label_emd_is_the_optimal_transport_cost_with_unit_ground_distance() -> None:
    rng = np.random.default_rng(0)
    for size in (2, 3, 5, 8):
        p, q = rng.dirichlet(np.ones(size)), rng.dirichlet(np.full(size, 0.3))
        assert label_emd(p, q) == pytest.approx(_emd_by_linear_program(p, q), abs=1e-7)


def test_token_counts() -> None:
    assert token_counts([[1, 1, 4], [0]], 6).tolist() == [1, 2, 0, 0, 1, 0]
    assert token_counts([], 3).tolist() == [0, 0, 0]


def test_measure_heterogeneity_on_hand_made_clients() -> None:
    stats = measure_heterogeneity(
        train_ids={"b": [[2, 3]], "a": [[1, 1], [2]]},
        eval_sizes={"a": 1, "b": 2},
        labels={"a": ["x", "y"], "b": ["y"]},
        label_field="category",
        dropped={"c": "too small"},
    )
    assert [c.client_id for c in stats.clients] == ["a", "b"]
    assert stats.labels == ["y", "x"]  # most frequent first
    a, b = stats.clients
    assert (a.train, a.eval, a.train_tokens, a.label_counts) == (2, 1, 3, [1, 1])
    assert (b.train, b.eval, b.train_tokens, b.label_counts) == (1, 2, 2, [1, 0])
    # tokens 0..3: global (0, 2, 2, 1)/5, a (0, 2, 1, 0)/3, b (0, 0, 1, 1)/2
    glob = [0, 2 / 5, 2 / 5, 1 / 5]
    assert a.token_jsd == pytest.approx(_jsd_by_hand([0, 2 / 3, 1 / 3, 0], glob))
    assert b.token_jsd == pytest.approx(_jsd_by_hand([0, 0, 1 / 2, 1 / 2], glob))
    # labels (y, x): global (2/3, 1/3), a (1/2, 1/2), b (1, 0)
    assert a.label_emd == pytest.approx(1 / 6)
    assert b.label_emd == pytest.approx(1 / 3)
    assert stats.label_matrix().tolist() == [[0.5, 0.5], [1.0, 0.0]]
    summary = stats.summary()
    assert summary["size_cv"] == pytest.approx(0.5 / 1.5)  # sizes 2 and 1
    assert summary["token_jsd_mean"] == pytest.approx((a.token_jsd + b.token_jsd) / 2)
    assert summary["label_emd_mean"] == pytest.approx(0.25)
    assert summary["labels_per_client"] == pytest.approx(1.5)
    assert summary["dropped_clients"] == 1
    assert a.top_labels(stats.labels) == [("y", 0.5), ("x", 0.5)]
    assert stats.to_json()["clients"][1]["label_counts"] == [1, 0]


def test_measure_heterogeneity_without_labels() -> None:
    stats = measure_heterogeneity({"a": [[1]], "b": [[1]]}, {"a": 1, "b": 1})
    assert stats.label_field is None and stats.labels == []
    assert all(c.label_emd is None and c.token_jsd == 0.0 for c in stats.clients)
    summary = stats.summary()
    assert summary["label_emd_mean"] is None and summary["labels_per_client"] is None
