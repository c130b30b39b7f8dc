"""Central DP noise: its calibration (chi-square), FedAvg exactly without it, its refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedllm.aggregate.mean import WeightedMean
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Constant, Pipeline, PipelineError, RoundReport
from fedllm.privacy.central_dp.noise import GaussianNoiseStage, noise_std
from fedllm.types import ClientUpdate


def updates(shapes: list[tuple[int, ...]], n: int, seed: int) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [
        ClientUpdate(
            client_id=f"c{i}",
            delta={f"w{k}": torch.randn(s, generator=g) for k, s in enumerate(shapes)},
            num_examples=1,
        )
        for i in range(n)
    ]


def run_round(pipeline: Pipeline, batch: list[ClientUpdate], seed: int) -> dict[str, torch.Tensor]:
    transformed = [pipeline.client(u, pipeline.broadcast_config()) for u in batch]
    pipeline.start(transformed[0].delta)
    for u in transformed:
        pipeline.add(u, 1.0)
    return pipeline.finish(RoundReport(1, len(batch), total_weight=float(len(batch)), seed=seed))


def test_the_added_noise_has_the_calibrated_variance() -> None:
    """sum(noise^2) / std^2 is chi-square with one degree per entry."""
    z, clip, n = 1.3, 0.5, 8
    pipeline = Pipeline([ClipStage(clip), GaussianNoiseStage(z, Constant(clip))], WeightedMean())
    zeros = [ClientUpdate(f"c{i}", {"w": torch.zeros(400, 250)}, 1) for i in range(n)]
    noise = run_round(pipeline, zeros, seed=11)["w"].double()
    dof = noise.numel()
    statistic = float((noise / noise_std(z, clip, n)).pow(2).sum())
    p = stats.chi2.sf(statistic, dof)
    assert 0.001 < p < 0.999, p
    # a std off by 1% is caught: the test has the power to see a wrong calibration
    wrong = float((noise / (1.01 * noise_std(z, clip, n))).pow(2).sum())
    assert stats.chi2.cdf(wrong, dof) < 1e-6
    assert abs(float(noise.mean())) < 5 * noise_std(z, clip, n) / dof**0.5


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), min_size=1, max_size=4),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_without_noise_and_with_a_clip_above_every_norm_it_is_fedavg_exactly(
    shapes: list[tuple[int, int]], n: int, seed: int
) -> None:
    batch = updates(shapes, n, seed)
    big = 1e6
    dp = Pipeline([ClipStage(big), GaussianNoiseStage(0.0, Constant(big))], WeightedMean())
    plain = Pipeline([], WeightedMean())
    got, want = run_round(dp, batch, seed), run_round(plain, batch, seed)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key])


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise() -> None:
    stage = GaussianNoiseStage(1.0, Constant(1.0))
    zero = {"a": torch.zeros(50), "b": torch.zeros(3, 3)}
    report = RoundReport(1, 2, total_weight=2.0, seed=5)
    first = stage.server(zero, stage.initial_state(), report)
    again = stage.server(zero, stage.initial_state(), report)
    other = stage.server(zero, stage.initial_state(), RoundReport(1, 2, total_weight=2.0, seed=6))
    assert all(torch.equal(first[k], again[k]) for k in zero)
    assert not torch.equal(first["a"], other["a"])
    assert first["b"].dtype == torch.float32


def test_weights_other_than_uniform_are_refused() -> None:
    stage = GaussianNoiseStage(1.0, Constant(1.0))
    with pytest.raises(PipelineError, match="server.weighting = 'uniform'"):
        stage.server(
            {"a": torch.zeros(2)}, stage.initial_state(), RoundReport(1, 2, total_weight=57.0)
        )


def test_noise_without_a_clip_before_it_is_refused() -> None:
    with pytest.raises(PipelineError, match="needs a clipping stage before it"):
        Pipeline([GaussianNoiseStage(1.0, Constant(1.0))], WeightedMean())


def test_the_noise_follows_the_clip_estimator() -> None:
    class Halving:
        def initial(self) -> float:
            return 4.0

        def next(self, value: float, report: RoundReport) -> float:
            return value / 2

    stage = GaussianNoiseStage(1.0, Halving())
    state = stage.next_state(stage.initial_state(), RoundReport(1, 1))
    assert state == {"clip": 2.0, "multiplier": 1.0}


def test_noise_with_a_robust_batch_aggregator_is_refused() -> None:
    class Median:
        name, linear = "median", False

        def aggregate(self, updates: object, reference: object) -> object:
            raise AssertionError("never reached")

    stages = [ClipStage(1.0), GaussianNoiseStage(1.0, Constant(1.0))]
    with pytest.raises(PipelineError, match="only works with a linear aggregator"):
        Pipeline(stages, Median())  # type: ignore[arg-type]
