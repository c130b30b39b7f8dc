"""Canary rank and exposure on hand-made loss tables, candidate draws, extrapolation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllm.privacy.audit.exposure import candidate_secrets, exposure_of, rank_among


def test_exact_rank_and_exposure_on_a_hand_made_table() -> None:
    # a space of 10 secrets: the canary (loss 2.0) and 9 others
    others = [5.0, 1.0, 3.0, 2.0, 7.0, 8.0, 0.5, 9.0, 6.0]
    # lower: 1.0 and 0.5; tied: one 2.0 -> rank 1 + 2 + 0.5
    assert rank_among(2.0, others) == 3.5
    found = exposure_of(2.0, others, space=10, exact=True)
    assert found.rank == 3.5
    assert found.exposure == pytest.approx(math.log2(10) - math.log2(3.5))
    assert found.max_exposure == pytest.approx(math.log2(10))
    best = exposure_of(0.1, others, space=10, exact=True)
    assert best.rank == 1.0 and best.exposure == pytest.approx(math.log2(10))
    worst = exposure_of(99.0, others, space=10, exact=True)
    assert worst.rank == 10.0 and worst.exposure == pytest.approx(0.0)


def test_sampled_rank_scales_the_share_below_to_the_space() -> None:
    others = np.arange(100, dtype=float)  # 100 sampled of a space of 10^6
    found = exposure_of(9.5, others, space=10**6, exact=False)  # 10 of 100 below
    assert found.rank == pytest.approx(1 + 0.1 * (10**6 - 1))
    assert not found.exact and found.candidates == 100
    top = exposure_of(-1.0, others, space=10**6, exact=False)
    assert top.rank == 1.0 and top.exposure == pytest.approx(math.log2(10**6))


def test_exact_needs_the_whole_space() -> None:
    with pytest.raises(ValueError, match="all 9"):
        exposure_of(1.0, [2.0, 3.0], space=10, exact=True)
    with pytest.raises(ValueError, match="need 1 to 9"):
        exposure_of(1.0, [], space=10, exact=True)


def test_candidates_are_the_whole_space_when_it_is_small() -> None:
    rng = np.random.default_rng(0)
    others, exact = candidate_secrets("042", 1000, rng)
    assert exact and len(others) == 999 and "042" not in others
    assert set(others) | {"042"} == {f"{i:03d}" for i in range(1000)}


def test_sampled_candidates_are_distinct_padded_and_seeded() -> None:
    others, exact = candidate_secrets("000123", 500, np.random.default_rng(1))
    assert not exact and len(others) == 500 == len(set(others))
    assert "000123" not in others and all(len(s) == 6 and s.isdigit() for s in others)
    again, _ = candidate_secrets("000123", 500, np.random.default_rng(1))
    assert again == others


def test_extrapolation_matches_a_known_distribution() -> None:
    # candidates' losses from N(50, 5): a canary at 35 (3 sd below) has P = 0.00135,
    # an exposure of -log2(0.00135) = 9.53 bits, which the sample's rank cannot show
    losses = np.random.default_rng(2).normal(50.0, 5.0, size=4000)
    found = exposure_of(35.0, losses, space=10**9, exact=False)
    assert found.extrapolated is not None
    assert found.extrapolated == pytest.approx(-math.log2(0.0013499), abs=0.6)
    assert found.extrapolated <= found.max_exposure
