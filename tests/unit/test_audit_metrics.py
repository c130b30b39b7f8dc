"""The audit's attack metrics against direct computations: AUC by counting every
(member, non-member) pair, TPR at low FPR by trying every threshold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm.privacy.audit.metrics import attack, auc, average_ranks, tpr_at_fpr

# small integers: many ties, which is where rank-based AUC goes wrong
scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)


def brute_auc(members: list[float], nonmembers: list[float]) -> float:
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def brute_tpr(members: list[float], nonmembers: list[float], fpr: float) -> float:
    """Every threshold between and beyond the observed scores, flag = score >= t."""
    values = sorted(set(members) | set(nonmembers))
    thresholds = [values[0] - 1.0, *values, values[-1] + 1.0]
    thresholds += [(a + b) / 2 for a, b in itertools.pairwise(values)]
    best = 0.0
    for t in thresholds:
        fp = sum(n >= t for n in nonmembers) / len(nonmembers)
        if fp <= fpr + 1e-12:
            best = max(best, sum(m >= t for m in members) / len(members))
    return best


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_auc_counts_every_pair_ties_as_half(members: list[float], nonmembers: list[float]) -> None:
    assert auc(members, nonmembers) == pytest.approx(brute_auc(members, nonmembers), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(scores, scores, st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 1.0]))
def test_tpr_is_the_best_threshold_within_the_fpr(
    members: list[float], nonmembers: list[float], fpr: float
) -> None:
    assert tpr_at_fpr(members, nonmembers, fpr) == pytest.approx(
        brute_tpr(members, nonmembers, fpr), abs=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=30))
def test_average_ranks_share_ties(values: list[float]) -> None:
    ranks = average_ranks(np.asarray(values))
    for i, v in enumerate(values):
        below = sum(u < v for u in values)
        equal = sum(u == v for u in values)
        assert ranks[i] == pytest.approx(below + (equal + 1) / 2)


def test_known_values() -> None:
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, 1.0], [1.0]) == 0.5
    # 200 non-members 0..199: 1% FPR allows two false positives (198, 199), so a
    # threshold just above 197 flags the members at 198.5 and 197.5, not the one at 150
    nonmembers = [float(n) for n in range(200)]
    assert tpr_at_fpr([198.5, 197.5, 150.0], nonmembers, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr([198.5, 196.5, 150.0], nonmembers, 0.01) == pytest.approx(1 / 3)
    result = attack([3.0, 2.0], [1.0, 0.0, 2.0])
    assert (result.members, result.nonmembers) == (2, 3)
    assert result.auc == pytest.approx(brute_auc([3.0, 2.0], [1.0, 0.0, 2.0]))
    # fewer than 100 non-members at 1%: zero false positives only
    assert tpr_at_fpr([5.0, 4.0, 1.0], [4.0, 0.0], 0.01) == pytest.approx(1 / 3)


def test_refuses_empty_or_non_finite() -> None:
    with pytest.raises(ValueError, match="no members"):
        auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        auc([1.0], [math.nan])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], 1.5)


def test_the_auc_interval_covers_the_true_auc_95_percent_of_the_time() -> None:
    """Scores N(d, 1) for members and N(0, 1) for non-members have AUC Phi(d / sqrt 2);
    over 2,000 draws of 40 + 30 scores the interval holds it about 95% of the time."""
    from scipy.stats import norm

    from fedllm.privacy.audit.metrics import auc_interval

    rng = np.random.default_rng(0)
    shift = 0.8
    truth = float(norm.cdf(shift / math.sqrt(2)))
    covered = 0
    for _ in range(2000):
        members, nonmembers = rng.normal(shift, 1, 40), rng.normal(0, 1, 30)
        low, high = auc_interval(auc(members, nonmembers), 40, 30)
        covered += low <= truth <= high
    assert 0.92 <= covered / 2000 <= 0.975


def test_tpr_at_an_fpr_the_held_out_count_cannot_resolve_is_not_reported() -> None:
    """8 members against 4 held-out records printed 'TPR@1%FPR 0.500' (issue 26): with
    fewer than 100 non-members a 1% FPR is no false positive at all."""
    small = attack([5.0, 4.0, 1.0, 3.0], [4.0, 0.0, 2.0, 1.0])
    assert small.tpr_at_low_fpr is None and small.to_json()["tpr_at_low_fpr"] is None
    big = attack([150.5, 97.5], [float(n) for n in range(100)])
    assert big.tpr_at_low_fpr == pytest.approx(0.5)  # one false positive allowed: 99


def test_the_membership_table_keeps_names_whole_at_80_columns() -> None:
    from io import StringIO

    from rich.console import Console

    from fedllm.privacy.audit.table import membership_table

    row = {
        "members": 8,
        "nonmembers": 4,
        **{
            name: attack([5.0, 4.0, 1.0, 3.0], [4.0, 0.0, 2.0, 1.0]).to_json()
            for name in ("loss", "reference")
        },
    }
    name = "a-rather-long-client-name"
    out = StringIO()
    Console(file=out, width=80).print(
        membership_table({"clients": {name: row}, "all": row}, "audit")
    )
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert text.count("TPR@1%") == 2 and text.count("n/a") == 4 and "±" in text
    assert name in text
