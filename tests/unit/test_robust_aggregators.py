"""The robust aggregators (``fedllm.security.defenses``) against their papers' formulas,
computed here directly with numpy on random rounds (centered clipping also over several
rounds, each from the previous result, and through a checkpoint), and against Flower's
reference implementations (``flwr.server.strategy.aggregate``); what each does with no
attacker and with attackers sending huge updates; which clients Krum, Multi-Krum and
Bulyan leave out; and the errors for impossible parameters, at aggregation and at config
load."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from flwr.server.strategy import aggregate as flower
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedllm.aggregate.mean import WeightedMean
from fedllm.components import AGGREGATORS
from fedllm.config import ConfigError
from fedllm.pipeline.build import build_aggregator
from fedllm.pipeline.stage import BatchResult, WeightedUpdate
from fedllm.security.defenses.bulyan import Bulyan, BulyanSettings
from fedllm.security.defenses.centered_clip import CenteredClip, CenteredClipSettings
from fedllm.security.defenses.geometric_median import GeometricMedian, GeometricMedianSettings
from fedllm.security.defenses.krum import (
    Krum,
    KrumSettings,
    MultiKrum,
    MultiKrumSettings,
    krum_scores,
)
from fedllm.security.defenses.median import CoordinateMedian
from fedllm.security.defenses.norm_bound import NormBound, NormBoundSettings
from fedllm.security.defenses.trimmed_mean import TrimmedMean, TrimmedMeanSettings
from fedllm.types import Params
from tests.support.runs import tiny_config

MORE = ("fltrust", "foolsgold", "flame")
"""Rules that need more than the round's updates: tests/unit/test_robust_aggregators_more.py."""
ROBUST = [n for n in AGGREGATORS.names() if n not in ("mean", *MORE) and not n.startswith("test_")]

# --- random rounds -------------------------------------------------------------------


@dataclass
class Round:
    """``n`` clients' updates as numpy arrays (one list of tensors per client)."""

    arrays: list[list[np.ndarray]]
    weights: list[float]
    dtype: torch.dtype = torch.float64

    @property
    def reference(self) -> Params:
        return {
            f"t{k}": torch.zeros(a.shape, dtype=self.dtype) for k, a in enumerate(self.arrays[0])
        }

    @property
    def updates(self) -> list[WeightedUpdate]:
        return [
            WeightedUpdate(
                f"c{i}",
                {f"t{k}": torch.tensor(a, dtype=self.dtype) for k, a in enumerate(tensors)},
                w,
            )
            for i, (tensors, w) in enumerate(zip(self.arrays, self.weights, strict=True))
        ]

    @property
    def matrix(self) -> np.ndarray:
        """``[n, d]``: each client's tensors flattened and concatenated (float64)."""
        return np.stack([np.concatenate([a.reshape(-1) for a in t]) for t in self.arrays])

    @property
    def w(self) -> np.ndarray:
        return np.array(self.weights, dtype=np.float64)


def flat(result: BatchResult, reference: Params) -> np.ndarray:
    """The combined update as one float64 vector, checking names, shapes and dtypes."""
    assert list(result.combined) == list(reference)
    for name, ref in reference.items():
        assert result.combined[name].shape == ref.shape
        assert result.combined[name].dtype == ref.dtype
    return np.concatenate([result.combined[n].double().numpy().reshape(-1) for n in reference])


def from_matrix(matrix: np.ndarray, weights: Sequence[float] | None = None) -> Round:
    """A round of one tensor per client, the rows of ``matrix``."""
    n = matrix.shape[0]
    return Round([[row.copy()] for row in matrix], list(weights or [1.0] * n))


@st.composite
def rounds(draw: Any, fewest: int = 1, most: int = 9) -> Round:
    """Random shapes (0-d to 2-d tensors), clients, weights and scales."""
    n = draw(st.integers(fewest, most))
    shapes = draw(
        st.lists(st.lists(st.integers(1, 4), max_size=2).map(tuple), min_size=1, max_size=3)
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    arrays = [[rng.normal(size=s) * scale for s in shapes] for _ in range(n)]
    weights = draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n))
    return Round(arrays, weights)


def close(actual: np.ndarray, expected: np.ndarray, scale: float = 1.0) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12 * scale)


# --- the papers' formulas, transcribed ------------------------------------------------


def paper_median(x: np.ndarray) -> np.ndarray:
    """Yin et al. 2018: med{x_i,k} per coordinate k."""
    return np.array([np.median(x[:, k]) for k in range(x.shape[1])])


def paper_trimmed_mean(x: np.ndarray, b: int) -> np.ndarray:
    """Yin et al. 2018: per coordinate, the mean of the values left once the b largest
    and the b smallest are removed."""
    n = x.shape[0]
    return np.array([np.mean(sorted(x[:, k])[b : n - b]) for k in range(x.shape[1])])


def paper_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al. 2017: s(i) = sum of ||V_i - V_j||^2 over the n - f - 2 nearest j."""
    n = x.shape[0]
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


def paper_multi_krum(x: np.ndarray, w: np.ndarray, f: int, m: int) -> tuple[np.ndarray, list[int]]:
    """The m lowest scores (ties: the earlier), averaged with the client weights."""
    chosen = list(np.argsort(paper_krum_scores(x, f), kind="stable")[:m])
    return (w[chosen] @ x[chosen]) / w[chosen].sum(), chosen


def paper_bulyan_select(distances: np.ndarray, f: int) -> list[int]:
    """El Mhamdi et al. 2018's selection: theta = n - 2f times, Krum on the remaining set
    R (each score over the |R| - f - 2 nearest others in R, at least 1 as in Flower's
    Krum; none left for a lone update) moves its pick from R to S. Ties: the earlier."""
    n = distances.shape[0]
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        nearest = max(1, len(remaining) - f - 2)
        scores = [
            sum(sorted(distances[i, j] for j in remaining if j != i)[:nearest]) for i in remaining
        ]
        chosen.append(remaining.pop(int(np.argmin(scores))))  # argmin: the first of equals
    return chosen


def paper_bulyan(
    x: np.ndarray, f: int, distances: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """El Mhamdi et al. 2018: the recursive Krum selection of theta = n - 2f (on the
    squared distances of the rows of x, or on ``distances``); per coordinate, the mean of
    the beta = n - 4f selected values closest to their median."""
    n = x.shape[0]
    if distances is None:
        distances = np.array([[float(np.sum((a - b) ** 2)) for b in x] for a in x])
    chosen = paper_bulyan_select(distances, f)
    beta = n - 4 * f
    out = []
    for k in range(x.shape[1]):
        values = x[chosen, k]
        nearest = np.argsort(np.abs(values - np.median(values)), kind="stable")[:beta]
        out.append(values[nearest].mean())
    return np.array(out), chosen


def paper_geometric_median(
    x: np.ndarray, alphas: np.ndarray, nu: float, iterations: int, tolerance: float
) -> np.ndarray:
    """RFA (Pillutla et al. 2022): smoothed Weiszfeld from the weighted mean, stopped when
    the objective sum_i alpha_i ||v - w_i|| changes by less than tolerance times it."""

    def objective(v: np.ndarray) -> float:
        return float(sum(a * np.linalg.norm(v - p) for a, p in zip(alphas, x, strict=True)))

    v = (alphas @ x) / alphas.sum()
    value = objective(v)
    for _ in range(iterations):
        betas = np.array(
            [a / max(nu, np.linalg.norm(v - p)) for a, p in zip(alphas, x, strict=True)]
        )
        v = (betas @ x) / betas.sum()
        previous, value = value, objective(v)
        if abs(previous - value) < tolerance * value:
            break
    return v


def paper_norm_bound(x: np.ndarray, w: np.ndarray, bound: float) -> np.ndarray:
    """Sun et al. 2019: sum_k (n_k / N) dw_k / max(1, ||dw_k|| / M)."""
    clipped = [row / max(1.0, np.linalg.norm(row) / bound) for row in x]
    return sum(wk * c for wk, c in zip(w, clipped, strict=True)) / w.sum()


def paper_centered_clip(
    x: np.ndarray, w: np.ndarray, tau: float, iterations: int, v: np.ndarray
) -> np.ndarray:
    """Karimireddy et al. 2021: v <- v + mean_i (x_i - v) min(1, tau / ||x_i - v||),
    the mean weighted by the client weights."""
    for _ in range(iterations):
        pulls = [
            (row - v) * min(1.0, tau / np.linalg.norm(row - v)) if np.any(row != v) else row - v
            for row in x
        ]
        v = v + sum(wk * p for wk, p in zip(w, pulls, strict=True)) / w.sum()
    return v


# --- each rule against its paper ------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(rounds())
def test_median_is_the_coordinate_wise_median(r: Round) -> None:
    result = CoordinateMedian().aggregate(r.updates, r.reference)
    close(flat(result, r.reference), paper_median(r.matrix), np.abs(r.matrix).max())
    assert result.excluded == []


@settings(max_examples=40, deadline=None)
@given(rounds(), st.data())
def test_trimmed_mean_trims_floor_beta_n_from_each_end(r: Round, data: Any) -> None:
    n = len(r.arrays)
    b = data.draw(st.integers(0, (n - 1) // 2))
    beta = (b + 0.5) / n  # floor(beta n) = b, away from a rounding edge
    if beta >= 0.5:
        beta = b / n
    result = TrimmedMean(TrimmedMeanSettings(beta=beta)).aggregate(r.updates, r.reference)
    close(flat(result, r.reference), paper_trimmed_mean(r.matrix, b), np.abs(r.matrix).max())


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=3, most=12), st.data())
def test_krum_scores_sum_the_n_minus_f_minus_2_nearest(r: Round, data: Any) -> None:
    n = len(r.arrays)
    f = data.draw(st.integers(0, (n - 3) // 2))
    from fedllm.security.defenses.flat import squared_distances, stack

    scores = krum_scores(squared_distances(stack(r.updates, r.reference)), f).numpy()
    np.testing.assert_allclose(scores, paper_krum_scores(r.matrix, f), rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=3, most=12), st.data())
def test_krum_and_multi_krum_select_and_exclude_as_the_paper(r: Round, data: Any) -> None:
    n = len(r.arrays)
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.one_of(st.none(), st.integers(1, n)))
    ids = [u.client_id for u in r.updates]
    scale = np.abs(r.matrix).max()

    krum = Krum(KrumSettings(f=f)).aggregate(r.updates, r.reference)
    expected, chosen = paper_multi_krum(r.matrix, r.w, f, 1)
    close(flat(krum, r.reference), r.matrix[chosen[0]], scale)
    assert krum.excluded == [c for i, c in enumerate(ids) if i != chosen[0]]

    multi = MultiKrum(MultiKrumSettings(f=f, m=m)).aggregate(r.updates, r.reference)
    expected, chosen = paper_multi_krum(r.matrix, r.w, f, m if m is not None else n - f)
    close(flat(multi, r.reference), expected, scale)
    assert multi.excluded == [c for i, c in enumerate(ids) if i not in chosen]


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=3, most=13), st.data())
def test_bulyan_averages_the_n_minus_4f_values_closest_to_the_median(r: Round, data: Any) -> None:
    n = len(r.arrays)
    f = data.draw(st.integers(0, (n - 3) // 4))
    result = Bulyan(BulyanSettings(f=f)).aggregate(r.updates, r.reference)
    expected, chosen = paper_bulyan(r.matrix, f)
    close(flat(result, r.reference), expected, np.abs(r.matrix).max())
    ids = [u.client_id for u in r.updates]
    assert result.excluded == [c for i, c in enumerate(ids) if i not in chosen]
    assert len(result.excluded) == 2 * f


@settings(max_examples=30, deadline=None)
@given(
    rounds(),
    st.sampled_from([1e-8, 1e-6, 1e-2]),
    st.integers(1, 50),
    st.sampled_from([0.0, 1e-6, 1e-3]),
)
def test_geometric_median_is_rfas_smoothed_weiszfeld(
    r: Round, nu: float, iterations: int, tolerance: float
) -> None:
    chosen = GeometricMedianSettings(nu=nu, max_iterations=iterations, tolerance=tolerance)
    result = GeometricMedian(chosen).aggregate(r.updates, r.reference)
    expected = paper_geometric_median(r.matrix, r.w, nu, iterations, tolerance)
    np.testing.assert_allclose(
        flat(result, r.reference), expected, rtol=1e-7, atol=1e-10 * np.abs(r.matrix).max()
    )


@settings(max_examples=30, deadline=None)
@given(rounds(), st.floats(1e-3, 1e3))
def test_norm_bound_clips_each_update_then_takes_the_weighted_mean(r: Round, bound: float) -> None:
    result = NormBound(NormBoundSettings(bound=bound)).aggregate(r.updates, r.reference)
    close(flat(result, r.reference), paper_norm_bound(r.matrix, r.w, bound), bound)


@settings(max_examples=30, deadline=None)
@given(
    rounds(),
    st.floats(1e-3, 1e3),
    st.integers(1, 6),
    st.sampled_from(["previous", "median", "zero"]),
)
def test_centered_clip_iterates_the_clipped_mean(
    r: Round, tau: float, iterations: int, start: str
) -> None:
    """One round: ``previous`` has no previous result yet and starts from zero."""
    chosen = CenteredClipSettings(tau=tau, iterations=iterations, start=start)  # type: ignore[arg-type]
    rule = CenteredClip(chosen)
    result = rule.aggregate(r.updates, r.reference)
    v0 = paper_median(r.matrix) if start == "median" else np.zeros(r.matrix.shape[1])
    expected = paper_centered_clip(r.matrix, r.w, tau, iterations, v0)
    close(flat(result, r.reference), expected, np.abs(r.matrix).max() + tau)
    assert rule.details() == {"start": "zero" if start == "previous" else start}


@st.composite
def round_series(draw: Any) -> list[Round]:
    """Two or three rounds of one model (the same tensor shapes), each with its own
    clients (1 to 9), weights and updates; one scale for the run."""
    shapes = draw(
        st.lists(st.lists(st.integers(1, 4), max_size=2).map(tuple), min_size=1, max_size=3)
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    series = []
    for _ in range(draw(st.integers(2, 3))):
        n = draw(st.integers(1, 9))
        shift = 3 * rng.normal()  # rounds apart: where a round starts matters
        arrays = [[(rng.normal(size=s) + shift) * scale for s in shapes] for _ in range(n)]
        series.append(Round(arrays, draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n))))
    return series


@settings(max_examples=30, deadline=None)
@given(round_series(), st.floats(1e-3, 1e3), st.integers(1, 6))
def test_centered_clip_starts_each_round_from_the_previous_result(
    series: list[Round], tau: float, iterations: int
) -> None:
    """Karimireddy et al. 2021 over rounds: v_0 of round t is v_L of round t - 1, and
    v_0 = 0 in round 1 (the paper's momentum starts at 0)."""
    rule = CenteredClip(CenteredClipSettings(tau=tau, iterations=iterations))
    v = np.zeros(series[0].matrix.shape[1])
    for t, r in enumerate(series, start=1):
        rule.begin(t, 0)
        result = rule.aggregate(r.updates, r.reference)
        v = paper_centered_clip(r.matrix, r.w, tau, iterations, v)
        scale = max(np.abs(s.matrix).max() for s in series[:t]) + t * iterations * tau
        close(flat(result, r.reference), v, scale)
        assert result.excluded == []
        start = {"start": "zero"} if t == 1 else {"start": "previous", "from_round": t - 1}
        assert rule.details() == start


def test_centered_clip_keeps_its_centre_through_rounds_that_do_not_reach_it() -> None:
    """Round 2 never reaches the rule (skipped), round 3's result is not finite (float32
    overflow: the model is left unchanged): round 4 starts from round 1's result."""
    tau = 1e38

    def one_coordinate(*values: float) -> Round:
        return Round([[np.array([v])] for v in values], [1.0] * len(values), torch.float32)

    first, overflowing = one_coordinate(-3e38, -3e38), one_coordinate(3e38, 3e38)
    last = one_coordinate(-2e38, -2.5e38, -1e38)
    rule = CenteredClip(CenteredClipSettings(tau=tau, iterations=3))
    rule.begin(1, 0)
    v1 = flat(rule.aggregate(first.updates, first.reference), first.reference)
    np.testing.assert_allclose(v1, [-3e38], rtol=1e-6)  # three steps of tau from zero
    rule.begin(3, 0)
    result = rule.aggregate(overflowing.updates, overflowing.reference)
    assert not np.isfinite(flat(result, overflowing.reference)).all()  # 3e38 - -3e38: inf
    rule.begin(4, 0)
    got = flat(rule.aggregate(last.updates, last.reference), last.reference)
    assert rule.details() == {"start": "previous", "from_round": 1}
    np.testing.assert_allclose(got, paper_centered_clip(last.matrix, last.w, tau, 3, v1), rtol=1e-5)


def test_centered_clip_resumes_from_its_state_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    rounds_ = [from_matrix(rng.normal(size=(5, 7)).astype(np.float32)) for _ in range(3)]
    rounds_ = [Round(r.arrays, r.weights, torch.float32) for r in rounds_]
    chosen = CenteredClipSettings(tau=0.5, iterations=2)
    whole = CenteredClip(chosen)
    outputs = []
    for t, r in enumerate(rounds_, start=1):
        whole.begin(t, 0)
        outputs.append(whole.aggregate(r.updates, r.reference).combined)
    cut = CenteredClip(chosen)
    for t, r in enumerate(rounds_[:2], start=1):
        cut.begin(t, 0)
        cut.aggregate(r.updates, r.reference)
    tensors, meta = cut.state()
    assert set(tensors) == {"centre"} and meta == {"round": 2}
    resumed = CenteredClip(chosen)
    resumed.restore({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    resumed.begin(3, 0)
    again = resumed.aggregate(rounds_[2].updates, rounds_[2].reference).combined
    assert all(torch.equal(again[k], outputs[2][k]) for k in again)
    assert resumed.details() == {"start": "previous", "from_round": 2}
    fresh = CenteredClip(chosen)  # without the restore: round 3 from zero, another result
    fresh.begin(3, 0)
    other = fresh.aggregate(rounds_[2].updates, rounds_[2].reference).combined
    assert not all(torch.equal(other[k], outputs[2][k]) for k in other)
    assert CenteredClip(CenteredClipSettings(start="median")).state() == ({}, {})


def test_centered_clip_refuses_a_previous_result_of_another_length() -> None:
    rule = CenteredClip()
    r = from_matrix(np.ones((3, 4)))
    rule.aggregate(r.updates, r.reference)
    other = from_matrix(np.ones((3, 5)))
    with pytest.raises(ValueError, match="previous result has 4 entries, this round's updates 5"):
        rule.aggregate(other.updates, other.reference)


def test_float32_updates_come_back_in_float32_close_to_the_float64_formula() -> None:
    rng = np.random.default_rng(3)
    r = Round([[rng.normal(size=(3, 5)), rng.normal(size=4)] for _ in range(7)], [1.0] * 7)
    r32 = Round(r.arrays, r.weights, torch.float32)
    expected = {
        "median": paper_median(r.matrix),
        "trimmed_mean": paper_trimmed_mean(r.matrix, 0),
        "norm_bound": paper_norm_bound(r.matrix, r.w, 1.0),
    }
    for name, want in expected.items():
        got = flat(AGGREGATORS.get(name)().aggregate(r32.updates, r32.reference), r32.reference)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- against Flower's reference implementations -----------------------------------
#
# flwr.server.strategy.aggregate takes a list of (arrays, num_examples). Where Flower
# and fedllm differ by design the inputs are restricted, not fedllm: ties (Flower's
# np.argsort and np.argpartition do not keep arrival order; fedllm keeps the earlier
# update, and the smaller value at Bulyan's second step) do not occur in rounds of
# random normal values, so no draw is excluded for them. The one tie they do meet,
# a Bulyan pick over one neighbour (the closest remaining pair scores alike), both
# break by arrival order: Flower's np.argmin over its remaining list, kept in order.


def flower_results(r: Round, examples: Sequence[int] | None = None) -> list[Any]:
    """The round as Flower's ``results``: each client's arrays and its example count."""
    counts = list(examples) if examples is not None else [1] * len(r.arrays)
    return [([a.copy() for a in t], c) for t, c in zip(r.arrays, counts, strict=True)]


def flower_flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def flower_bulyan(r: Round, f: int) -> tuple[np.ndarray, list[int]]:
    """Flower's ``aggregate_bulyan`` with its Krum, and the clients its Krum picked, in
    order (a recording wrapper stands in for ``aggregate_krum``, which Bulyan looks up
    to accept the rule)."""
    results = flower_results(r)
    index = {id(arrays): i for i, (arrays, _) in enumerate(results)}
    picks: list[int] = []
    krum = flower.aggregate_krum

    def recording_krum(**kwargs: Any) -> Any:
        best = krum(**kwargs)
        picks.append(index[id(best)])
        return best

    with mock.patch.object(flower, "aggregate_krum", recording_krum):
        combined = flower.aggregate_bulyan(
            list(results), num_malicious=f, aggregation_rule=recording_krum, to_keep=0
        )
    return flower_flat(combined), picks


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=7, most=13), st.data())
def test_bulyan_matches_flowers_aggregate_bulyan(r: Round, data: Any) -> None:
    """Flower applies Krum recursively, each time to the remaining updates with
    max(1, |R| - f - 2) neighbours (fedllm's clamp), then averages the beta values
    closest to the np.median of the selection. It ignores num_examples, as fedllm.
    f >= 1 (n >= 7): with f = 0 every update is selected and averaged."""
    n = len(r.arrays)
    f = data.draw(st.integers(1, (n - 3) // 4))
    result = Bulyan(BulyanSettings(f=f)).aggregate(r.updates, r.reference)
    expected, picks = flower_bulyan(r, f)
    close(flat(result, r.reference), expected, np.abs(r.matrix).max())
    ids = [u.client_id for u in r.updates]
    assert result.excluded == [c for i, c in enumerate(ids) if i not in picks]
    assert len(picks) == n - 2 * f


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=3, most=12), st.data())
def test_krum_and_multi_krum_match_flowers_aggregate_krum(r: Round, data: Any) -> None:
    """Flower's to_keep = 0 is Krum (the lowest-scoring update); to_keep = m >= 1 is
    Multi-Krum, the mean of the m lowest scores weighted by num_examples, as fedllm's
    weighted mean: the client weights are drawn as whole example counts. Flower clamps
    the neighbour count to max(1, n - f - 2), which is n - f - 2 for every n > 2f + 2
    fedllm accepts."""
    n = len(r.arrays)
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(1, n))
    examples = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    weighted = Round(r.arrays, [float(e) for e in examples])
    scale = np.abs(r.matrix).max()

    krum = Krum(KrumSettings(f=f)).aggregate(weighted.updates, weighted.reference)
    expected = flower.aggregate_krum(flower_results(r, examples), num_malicious=f, to_keep=0)
    close(flat(krum, weighted.reference), flower_flat(expected), scale)

    multi = MultiKrum(MultiKrumSettings(f=f, m=m)).aggregate(weighted.updates, weighted.reference)
    expected = flower.aggregate_krum(flower_results(r, examples), num_malicious=f, to_keep=m)
    close(flat(multi, weighted.reference), flower_flat(expected), scale)


@settings(max_examples=30, deadline=None)
@given(rounds())
def test_median_matches_flowers_aggregate_median(r: Round) -> None:
    """Both np.median per coordinate (even n: the mean of the two middle values); both
    ignore the weights (Flower's num_examples: arbitrary counts)."""
    result = CoordinateMedian().aggregate(r.updates, r.reference)
    expected = flower.aggregate_median(flower_results(r, range(7, 7 + len(r.arrays))))
    close(flat(result, r.reference), flower_flat(expected), np.abs(r.matrix).max())


@settings(max_examples=40, deadline=None)
@given(rounds(), st.floats(0.0, 0.5, exclude_max=True))
def test_trimmed_mean_matches_flowers_aggregate_trimmed_avg(r: Round, beta: float) -> None:
    """Flower's proportiontocut is fedllm's beta: int(beta n) values cut from each end,
    the mean of the rest, num_examples ignored (as fedllm ignores the weights). fedllm's
    floor(beta n) tolerates a product just under a whole number (0.29 * 100 =
    28.999999999999996 trims 29, Flower's int() trims 28): such betas are left out."""
    n = len(r.arrays)
    assume(math.floor(beta * n) == math.floor(beta * n + 1e-9))
    result = TrimmedMean(TrimmedMeanSettings(beta=beta)).aggregate(r.updates, r.reference)
    expected = flower.aggregate_trimmed_avg(flower_results(r, range(1, n + 1)), beta)
    close(flat(result, r.reference), flower_flat(expected), np.abs(r.matrix).max())


def test_flowers_trimmed_avg_trims_one_fewer_just_under_a_whole_number() -> None:
    """The one difference the test above leaves out, pinned: beta = 0.29 of 100 updates."""
    values = np.arange(100, dtype=np.float64)[:, None] ** 2
    r = from_matrix(values)
    ours = TrimmedMean(TrimmedMeanSettings(beta=0.29)).aggregate(r.updates, r.reference)
    theirs = flower.aggregate_trimmed_avg(flower_results(r), 0.29)
    close(flat(ours, r.reference), paper_trimmed_mean(values, 29))
    close(flower_flat(theirs), paper_trimmed_mean(values, 28))


# --- no attacker; attackers ------------------------------------------------------------

SETTINGS = {  # for n = 11 updates of which 2 attack (f = 2)
    "median": None,
    "trimmed_mean": TrimmedMeanSettings(beta=0.2),
    "krum": KrumSettings(f=2),
    "multi_krum": MultiKrumSettings(f=2),
    "bulyan": BulyanSettings(f=2),
    "geometric_median": GeometricMedianSettings(),
    "norm_bound": NormBoundSettings(bound=10.0),
    "centered_clip": CenteredClipSettings(tau=1.0, iterations=3),
}


def build(name: str) -> Any:
    chosen = SETTINGS[name]
    return AGGREGATORS.get(name)() if chosen is None else AGGREGATORS.get(name)(chosen)


def test_every_robust_rule_is_tested() -> None:
    assert sorted(SETTINGS) == sorted(ROBUST)


@pytest.mark.parametrize(
    ("name", "start"),
    [(name, "median") for name in ROBUST]
    + [("centered_clip", "zero"), ("centered_clip", "previous")],
)
def test_identical_updates_give_that_update(name: str, start: str) -> None:
    """``start``: centered clipping's v_0 (its tau, 10, exceeds the update's norm)."""
    rng = np.random.default_rng(7)
    one = [rng.normal(size=(2, 3)), rng.normal(size=5)]  # norm about 3: under both bounds
    r = Round([[a.copy() for a in one] for _ in range(11)], list(rng.uniform(0.5, 5, 11)))
    aggregator = build(name)
    if name == "centered_clip":
        chosen = CenteredClipSettings(tau=10.0, iterations=3, start=start)  # type: ignore[arg-type]
        aggregator = CenteredClip(chosen)
    result = aggregator.aggregate(r.updates, r.reference)
    np.testing.assert_allclose(flat(result, r.reference), r.matrix[0], rtol=1e-12, atol=1e-12)


def attacked_round(sign: float) -> tuple[Round, np.ndarray]:
    """11 updates: 9 honest (normal, norm about 3), then 2 attackers at 1e6 (all
    coordinates ``sign`` 1e6)."""
    rng = np.random.default_rng(11)
    honest = rng.normal(size=(9, 8))
    attackers = np.full((2, 8), sign * 1e6)
    return from_matrix(np.vstack([honest, attackers]), list(rng.uniform(0.5, 5, 11))), honest


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("name", ROBUST)
def test_robust_rules_stay_with_the_honest_updates_where_the_mean_does_not(
    name: str, sign: float
) -> None:
    r, honest = attacked_round(sign)
    low, high = honest.min(axis=0), honest.max(axis=0)
    mean = WeightedMean()
    mean.start(r.reference)
    for u in r.updates:
        mean.add(u.delta, u.weight)
    assert np.abs(mean.result()["t0"].numpy()).max() > 1e4  # the mean follows the attackers

    got = flat(build(name).aggregate(r.updates, r.reference), r.reference)
    if name == "geometric_median":  # bounded by the honest spread, not inside their box
        centre = honest.mean(axis=0)
        radius = np.linalg.norm(honest - centre, axis=1).max()
        assert np.linalg.norm(got - centre) <= 2 * radius
    elif name == "norm_bound":
        assert np.linalg.norm(got) <= 10.0 + 1e-9
    elif name == "centered_clip":  # round 1 starts at zero, in the box; 3 steps of at most tau
        assert np.all(got >= low - 3.0) and np.all(got <= high + 3.0)
    else:
        assert np.all(got >= low - 1e-12) and np.all(got <= high + 1e-12)


@pytest.mark.parametrize("name", ["krum", "multi_krum"])
def test_the_selecting_rules_exclude_the_attackers(name: str) -> None:
    r, _ = attacked_round(1.0)
    result = build(name).aggregate(r.updates, r.reference)
    assert {"c9", "c10"} <= set(result.excluded)
    expected = {"krum": 10, "multi_krum": 2}[name]  # n - 1, f
    assert len(result.excluded) == expected


def test_bulyan_excludes_attackers_apart_but_its_last_pick_takes_a_colluding_pair() -> None:
    """Bulyan (f = 2, theta = 7 of 11) excludes two attackers far from everyone, each
    other included. Two identical attackers are each other's nearest update (distance
    0): the last pick, among 3 honest and the 2 attackers, scores over |R| - f - 2 = 1
    neighbour (the paper's count, not a clamp), so the pair scores 0 and its earlier
    member is selected (the paper allows up to f Byzantine updates in the selection);
    here the second step still keeps the result within the honest values."""
    rng = np.random.default_rng(11)
    honest = rng.normal(size=(9, 8))
    apart = from_matrix(np.vstack([honest, np.full((1, 8), 1e6), np.full((1, 8), -1e6)]))
    result = build("bulyan").aggregate(apart.updates, apart.reference)
    assert {"c9", "c10"} <= set(result.excluded)
    assert len(result.excluded) == 4  # 2f

    colluding, _ = attacked_round(1.0)
    result = build("bulyan").aggregate(colluding.updates, colluding.reference)
    assert "c9" not in result.excluded and "c10" in result.excluded
    assert len(result.excluded) == 4
    got = flat(result, colluding.reference)
    assert np.all(got >= honest.min(axis=0)) and np.all(got <= honest.max(axis=0))


def test_bulyan_applies_krum_recursively_not_one_multi_krum_scoring() -> None:
    """Seven updates on a line, f = 1 (theta = 5): 0, 3, 4, 5, 6, 8, 9 (c0 .. c6).

    One Multi-Krum scoring (4 neighbours each) ranks c3 15, c4 18, c2 22, c1 23, c5 30,
    c6 51, c0 86, and would exclude c0 and c6. Krum applied recursively picks c3 (15, 4
    neighbours), then among the six left c4 (17, 3 neighbours), then c1 (10, 2
    neighbours); then 1 neighbour each: c5 and c6 score 1 (the earlier, c5, is picked),
    and among c0, c2, c6 (|R| - f - 2 = 0, clamped to 1) c0 and c2 score 16 (c0 is
    picked). Excluded: c2 and c6."""
    r = from_matrix(np.array([[0.0], [3.0], [4.0], [5.0], [6.0], [8.0], [9.0]]))
    from fedllm.security.defenses.bulyan import recursive_krum_select
    from fedllm.security.defenses.flat import squared_distances, stack

    distances = squared_distances(stack(r.updates, r.reference))
    assert recursive_krum_select(distances, 1, 5) == [3, 4, 1, 5, 0]
    assert krum_scores(distances, 1).tolist() == [86, 23, 22, 15, 18, 30, 51]
    result = Bulyan(BulyanSettings(f=1)).aggregate(r.updates, r.reference)
    assert result.excluded == ["c2", "c6"]
    assert flower_bulyan(r, 1)[1] == [3, 4, 1, 5, 0]
    # theta = 5 values 0, 3, 5, 6, 8: the beta = 3 closest to the median 5 are 3, 5, 6
    close(flat(result, r.reference), np.array([14.0 / 3]))


def test_bulyans_last_pick_scores_over_one_neighbour_not_none() -> None:
    """f = 1, seven updates on a line: c0 = 40, far from c1 .. c6 = 0, 1, 3, 6, 10, 15.

    Krum picks c3, c4, c2 (4, 3, 2 neighbours), then c5 (1 neighbour: c5 and c6 score
    25, c5 is the earlier). The last pick, among c0, c1 and c6, has |R| - f - 2 = 0
    neighbours: every score would be 0 and arrival order would pick the outlier c0.
    Clamped to 1 neighbour (as Flower), c0 scores 625, c1 and c6 225 (each other's
    nearest), and c1 is picked."""
    r = from_matrix(np.array([[40.0], [0.0], [1.0], [3.0], [6.0], [10.0], [15.0]]))
    result = Bulyan(BulyanSettings(f=1)).aggregate(r.updates, r.reference)
    assert result.excluded == ["c0", "c6"]
    assert flower_bulyan(r, 1)[1] == [3, 4, 2, 5, 1]
    # selected 0, 1, 3, 6, 10, median 3: the beta = 3 closest are 3, 1 and, of 0 and 6
    # (both 3 away), the smaller
    close(flat(result, r.reference), np.array([4.0 / 3]))


# --- LoRA: distances on the product B A -----------------------------------------------


LORA_SHAPES = {
    "l0.lora_A.default.weight": (2, 5),
    "l0.lora_B.default.weight": (4, 2),
    "l1.lora_A.default.weight": (2, 3),
    "l1.lora_B.default.weight": (6, 2),
    "l1.bias": (6,),
}


@dataclass
class LoraRound:
    """A broadcast of two LoRA layers (r = 2) and a bias, and each client's delta."""

    base: dict[str, np.ndarray]
    deltas: list[dict[str, np.ndarray]]

    @property
    def reference(self) -> Params:
        return {k: torch.tensor(v) for k, v in self.base.items()}

    @property
    def updates(self) -> list[WeightedUpdate]:
        return [
            WeightedUpdate(f"c{i}", {k: torch.tensor(v) for k, v in d.items()}, 1.0)
            for i, d in enumerate(self.deltas)
        ]

    @property
    def rows(self) -> np.ndarray:
        """Each client's delta flattened, every tensor in ``base``'s order (``[n, d]``)."""
        flat_deltas = [np.concatenate([d[k].reshape(-1) for k in self.base]) for d in self.deltas]
        return np.stack(flat_deltas)

    def product(self, i: int, layer: str) -> np.ndarray:
        """Client ``i``'s ``(B + dB)(A + dA)`` of ``layer``, formed (``out x in``)."""
        a, b = f"{layer}.lora_A.default.weight", f"{layer}.lora_B.default.weight"
        d = self.deltas[i]
        return (self.base[b] + d[b]) @ (self.base[a] + d[a])


def lora_round(rng: np.random.Generator, n: int, factor_of: int | None = None) -> LoraRound:
    """``n`` small updates. Client ``factor_of``'s update rescales the factors (A by 4,
    B by 1/4): a large change of A and B, none of the product."""
    base = {k: rng.normal(size=s) for k, s in LORA_SHAPES.items()}
    deltas = [{k: 0.05 * rng.normal(size=s) for k, s in LORA_SHAPES.items()} for _ in range(n)]
    if factor_of is not None:
        deltas[factor_of] = {
            k: 3.0 * v if ".lora_A." in k else -0.75 * v if ".lora_B." in k else 0 * v
            for k, v in base.items()
        }
    return LoraRound(base, deltas)


def paper_product_distances(r: LoraRound) -> np.ndarray:
    """sum over layers of ||(B + dB_i)(A + dA_i) - (B + dB_j)(A + dA_j)||_F^2, plus the
    squared distance of the bias."""
    n = len(r.deltas)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            for layer in ("l0", "l1"):
                out[i, j] += np.sum((r.product(i, layer) - r.product(j, layer)) ** 2)
            out[i, j] += np.sum((r.deltas[i]["l1.bias"] - r.deltas[j]["l1.bias"]) ** 2)
    return out


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 9), st.integers(0, 2**32 - 1))
def test_product_distances_are_those_of_the_formed_products(n: int, seed: int) -> None:
    from fedllm.security.defenses.product import product_squared_distances

    r = lora_round(np.random.default_rng(seed), n)
    got = product_squared_distances(r.updates, r.reference).numpy()
    np.testing.assert_allclose(got, paper_product_distances(r), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(got, got.T)  # equal distances tie exactly


def test_krum_on_factors_rejects_what_krum_on_products_keeps() -> None:
    """An update that only rescales A and B (B A unchanged) is an outlier among the
    factors and the best update among the products."""
    r = lora_round(np.random.default_rng(5), 7, factor_of=3)
    reference, updates = r.reference, r.updates
    on_factors = Krum(KrumSettings(f=1)).aggregate(updates, reference)
    on_products = Krum(KrumSettings(f=1, distance="lora_product")).aggregate(updates, reference)
    assert "c3" in on_factors.excluded
    assert "c3" not in on_products.excluded
    chosen = np.argsort(paper_krum_scores_from(paper_product_distances(r), 1), kind="stable")[0]
    assert on_products.excluded == [u.client_id for i, u in enumerate(updates) if i != chosen]


@settings(max_examples=15, deadline=None)
@given(st.integers(7, 11), st.integers(0, 2**32 - 1), st.one_of(st.none(), st.integers(0, 6)))
def test_bulyan_on_products_selects_recursively_on_the_product_distances(
    n: int, seed: int, factor_of: int | None
) -> None:
    """The recursive selection ranks by the products' distances (the n x n matrix, each
    pick on the rows and columns of the updates left); the second step still averages
    the selected factors."""
    r = lora_round(np.random.default_rng(seed), n, factor_of)
    f = (n - 3) // 4
    result = Bulyan(BulyanSettings(f=f, distance="lora_product")).aggregate(r.updates, r.reference)
    factors = r.rows
    expected, chosen = paper_bulyan(factors, f, paper_product_distances(r))
    assert result.excluded == [u.client_id for i, u in enumerate(r.updates) if i not in chosen]
    close(flat(result, r.reference), expected, np.abs(factors).max())


def formed_change_norm(r: LoraRound, i: int, c: float) -> float:
    """||(B + c dB)(A + c dA) - B A|| over both layers, with the bias's c d, formed."""
    total = float(np.sum((c * r.deltas[i]["l1.bias"]) ** 2))
    for layer in ("l0", "l1"):
        a, b = f"{layer}.lora_A.default.weight", f"{layer}.lora_B.default.weight"
        d = r.deltas[i]
        moved = (r.base[b] + c * d[b]) @ (r.base[a] + c * d[a])
        total += float(np.sum((moved - r.base[b] @ r.base[a]) ** 2))
    return float(np.sqrt(total))


def largest_scale_at(r: LoraRound, i: int, bound: float) -> float:
    """The largest c in [0, 1] whose formed change is within ``bound`` (1 if the whole
    update is): a grid scan down from 1 for the last point within, then bisection."""
    if formed_change_norm(r, i, 1.0) <= bound:
        return 1.0
    grid = np.linspace(0.0, 1.0, 2001)
    lo = max(c for c in grid if formed_change_norm(r, i, c) <= bound)
    hi = lo + grid[1]
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if formed_change_norm(r, i, mid) <= bound else (lo, mid)
    return float(lo)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(3, 7),
    st.integers(0, 2**32 - 1),
    st.floats(0.01, 3.0),
    st.one_of(st.none(), st.integers(0, 2)),
)
def test_norm_bound_on_products_scales_each_update_to_the_formed_change_bound(
    n: int, seed: int, bound: float, factor_of: int | None
) -> None:
    r = lora_round(np.random.default_rng(seed), n, factor_of)
    settings = NormBoundSettings(bound=bound, measure="lora_product")
    result = NormBound(settings).aggregate(r.updates, r.reference)
    scales = [largest_scale_at(r, i, bound) for i in range(n)]
    for i, c in enumerate(scales):
        if c < 1.0:  # clipped: its change is the bound's length
            assert formed_change_norm(r, i, c) == pytest.approx(bound, rel=1e-6)
    rows = r.rows
    expected = (np.array(scales)[:, None] * rows).mean(axis=0)
    # the quartic's root (numpy.roots) against bisection on the formed products
    np.testing.assert_allclose(flat(result, r.reference), expected, rtol=1e-7, atol=1e-10)


def test_the_product_scale_is_the_last_crossing_when_the_change_dips_back() -> None:
    """c^2 (10 - 40 c + 40.5 c^2) rises above 0.1, falls below it and rises again: the
    scale kept is the largest within the bound, not the first crossing."""
    from fedllm.security.defenses.product import largest_scale_within

    def f(c: float) -> float:
        return c * c * (10 - 40 * c + 40.5 * c * c)

    grid = np.linspace(0.0, 1.0, 100001)
    within = grid[[f(c) <= 0.1 for c in grid]]
    assert within.max() > 0.5 and f(0.25) > 0.1  # two intervals: it dips back
    got = largest_scale_within(torch.tensor([10.0, -40.0, 40.5], dtype=torch.float64), 0.1**0.5)
    assert got == pytest.approx(within.max(), abs=2e-5)
    assert f(got) == pytest.approx(0.1, rel=1e-9)
    assert largest_scale_within(torch.tensor([0.01, 0.0, 0.0]), 1.0) == 1.0


def test_norm_bound_on_products_keeps_an_update_that_only_rescales_the_factors() -> None:
    """Client c1 multiplies A by 4 and B by 1/4: a long update of the factors, no change
    of B A. On the factors it is clipped; on the products it is kept whole."""
    r = lora_round(np.random.default_rng(3), 4, factor_of=1)
    rows = r.rows
    assert formed_change_norm(r, 1, 1.0) < 1e-12 < 0.5 < np.linalg.norm(rows[1])
    bound = 0.5 * float(np.linalg.norm(rows[1]))
    on_products = NormBound(NormBoundSettings(bound=bound, measure="lora_product"))
    on_factors = NormBound(NormBoundSettings(bound=bound))
    kept = flat(on_products.aggregate(r.updates, r.reference), r.reference)
    clipped = flat(on_factors.aggregate(r.updates, r.reference), r.reference)
    others = [i for i in range(4) if i != 1 and formed_change_norm(r, i, 1.0) <= bound]
    assert len(others) == 3  # the honest updates are within the bound either way
    close(kept, rows.mean(axis=0), 1e-9)
    close(clipped, (rows.sum(axis=0) - 0.5 * rows[1]) / 4, 1e-9)


def test_norm_bound_on_products_needs_lora_factors() -> None:
    r = from_matrix(np.random.default_rng(0).normal(size=(5, 3)))
    settings = NormBoundSettings(bound=1.0, measure="lora_product")
    with pytest.raises(ValueError, match="measure = 'lora_product' needs LoRA updates"):
        NormBound(settings).aggregate(r.updates, r.reference)


def paper_krum_scores_from(distances: np.ndarray, f: int) -> np.ndarray:
    n = distances.shape[0]
    return np.array(
        [sum(sorted(distances[i, j] for j in range(n) if j != i)[: n - f - 2]) for i in range(n)]
    )


def test_product_distances_need_lora_factors() -> None:
    r = from_matrix(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match="needs LoRA updates"):
        Krum(KrumSettings(f=1, distance="lora_product")).aggregate(r.updates, r.reference)


# --- impossible parameters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregator", "n", "message"),
    [
        (Krum(KrumSettings(f=1)), 4, r"Krum needs at least 5 updates \(n > 2f \+ 2 with f = 1\)"),
        (Krum(KrumSettings(f=2)), 6, r"Krum needs at least 7 updates"),
        (MultiKrum(MultiKrumSettings(f=0)), 2, r"Multi-Krum needs at least 3 updates"),
        (MultiKrum(MultiKrumSettings(f=0, m=5)), 4, r"selects m = 5 updates, but only 4"),
        (Bulyan(BulyanSettings(f=1)), 6, r"Bulyan needs at least 7 updates \(n >= 4f \+ 3"),
        (Bulyan(BulyanSettings(f=2)), 10, r"Bulyan needs at least 11 updates"),
        (CoordinateMedian(), 0, r"at least one update"),
    ],
)
def test_too_few_updates_are_refused_naming_the_condition(
    aggregator: Any, n: int, message: str
) -> None:
    r = from_matrix(np.random.default_rng(0).normal(size=(max(n, 1), 3)))
    updates = r.updates[:n]
    with pytest.raises(ValueError, match=message):
        aggregator.aggregate(updates, r.reference)


def test_a_negative_weight_and_an_update_of_other_tensors_are_refused() -> None:
    r = from_matrix(np.random.default_rng(0).normal(size=(5, 3)), [1, 1, -1, 1, 1])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        NormBound().aggregate(r.updates, r.reference)
    odd = [*r.updates[:4], WeightedUpdate("c4", {"other": torch.zeros(3)}, 1.0)]
    with pytest.raises(ValueError, match="'c4'.s update names other tensors"):
        CoordinateMedian().aggregate(odd, r.reference)


# --- the [aggregator.<name>] tables, at config load -----------------------------------

ENOUGH = ("server.clients_per_round=4", "server.min_clients=4", "data.num_clients=4")


def test_a_section_reaches_the_aggregator_and_mean_stays_as_it_was() -> None:
    config = tiny_config("server.aggregator='krum'", "aggregator.krum.f=0", *ENOUGH)
    built = build_aggregator(config)
    assert isinstance(built, Krum) and built.f == 0
    assert config.aggregator_settings_of("krum") == KrumSettings(f=0)
    default = build_aggregator(tiny_config())
    assert isinstance(default, WeightedMean)
    spread = tiny_config("server.aggregator='trimmed_mean'", "aggregator.trimmed_mean.beta=0.25")
    assert build_aggregator(spread).beta == 0.25  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("aggregator.krum.f=-1", "aggregator.krum.f: Input should be greater than or equal to 0"),
        ("aggregator.krum.g=1", "aggregator.krum.g: Extra inputs are not permitted"),
        ("aggregator.trimmed_mean.beta=0.5", "aggregator.trimmed_mean.beta: Input should be less"),
        ("aggregator.krumm.f=1", "[aggregator.krumm]: 'krumm' is not a known aggregator"),
        ("aggregator.mean.x=1", "aggregator 'mean' takes no settings section; remove the table"),
        ("aggregator.median.x=1", "aggregator 'median' takes no settings section"),
    ],
)
def test_a_bad_aggregator_section_is_refused_at_load(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(setting)
    assert message in str(caught.value)
    if "krumm" in setting:
        assert "did you mean 'krum'" in str(caught.value)


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        (
            ("server.aggregator='krum'",),
            "server.aggregator = 'krum' needs at least 5 updates a round (n > 2f + 2 with "
            "f = 1), but server.min_clients = 1: set server.min_clients to 5 or more",
        ),
        (
            ("server.aggregator='bulyan'", "aggregator.bulyan.f=1", *ENOUGH),
            "needs at least 7 updates a round (n >= 4f + 3 with f = 1), but server.min_clients = 4",
        ),
        (
            (
                "server.aggregator='multi_krum'",
                "aggregator.multi_krum.f=0",
                "aggregator.multi_krum.m=4",
                "server.clients_per_round=3",
                "server.min_clients=3",
            ),
            "needs at least 4 updates a round (n > 2f + 2 with f = 0, and m = 4 to select)",
        ),
    ],
)
def test_a_rule_that_cannot_have_enough_updates_is_refused_at_load(
    settings_: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(*settings_)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ("krum", "distance"),
        ("multi_krum", "distance"),
        ("bulyan", "distance"),
        ("norm_bound", "measure"),
    ],
)
def test_a_product_measure_without_lora_is_refused_at_load(rule: str, key: str) -> None:
    chosen = (f"server.aggregator='{rule}'", f"aggregator.{rule}.{key}='lora_product'")
    enough = ("server.clients_per_round=8", "server.min_clients=8", "data.num_clients=8")
    assert tiny_config(*chosen, *enough).method.kind == "lora"  # loads with LoRA
    with pytest.raises(ConfigError) as caught:
        tiny_config(*chosen, *enough, "method.kind='full'")
    assert (
        f"aggregator.{rule}.{key} = 'lora_product' measures each LoRA layer's B A, but "
        f"method.kind = 'full' trains no LoRA factors: set aggregator.{rule}.{key} = 'flat'"
        in str(caught.value)
    )
    tiny_config(f"server.aggregator='{rule}'", *enough, "method.kind='full'")  # flat: fine


@pytest.mark.parametrize("protocol", ["secagg.enabled=true", "he.enabled=true"])
def test_krum_is_refused_with_the_sum_only_protocols(protocol: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(
            protocol,
            "server.aggregator='krum'",
            "aggregator.krum.f=0",
            "server.weighting='uniform'",
            *ENOUGH,
        )
    assert (
        f"{protocol.replace('=', ' = ')} reveals only the sum, but server.aggregator = 'krum' "
        "needs every individual update" in str(caught.value)
    )


def test_trimmed_count_is_floor_beta_n() -> None:
    from fedllm.security.defenses.trimmed_mean import trimmed_count

    assert [trimmed_count(0.29, 100), trimmed_count(0.3, 10), trimmed_count(0.1, 9)] == [29, 3, 0]
    assert trimmed_count(0.49, 3) == math.floor(1.47)
