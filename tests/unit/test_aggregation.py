"""The streaming weighted mean, the pipeline's composition checks and FedAvg."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm.aggregate import mean as mean_module
from fedllm.aggregate.mean import Accumulator, WeightedMean
from fedllm.algorithms.hetero_rank.coverage import CoverageMean
from fedllm.config import ServerConfig
from fedllm.pipeline.clip import ClipStage, global_norm
from fedllm.pipeline.stage import Pipeline, PipelineError, Requirements, RoundReport, StageState
from fedllm.server.optimizer import FedAvg
from fedllm.types import ClientUpdate, Params


def random_updates(n: int, seed: int = 0) -> list[Params]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)} for _ in range(n)
    ]


def test_weighted_mean_matches_numpy() -> None:
    updates = random_updates(5)
    weights = [3.0, 1.0, 0.0, 7.5, 2.0]
    agg = WeightedMean()
    agg.start(updates[0])
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    result = agg.result()
    for name in ("w", "b"):
        stacked = np.stack([u[name].numpy().astype(np.float64) for u in updates])
        expected = np.tensordot(np.array(weights), stacked, axes=1) / sum(weights)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_weighted_mean_reuses_buffers_and_resets_between_rounds() -> None:
    agg = WeightedMean()
    first, second = random_updates(2, seed=1)
    agg.start(first)
    agg.add(first, 1.0)
    agg.result()
    buffer = agg._acc["w"]
    agg.start(second)
    agg.add(second, 2.0)
    assert agg._acc["w"] is buffer
    assert torch.allclose(agg.result()["w"], second["w"])
    assert agg.result()["w"] is buffer  # the mean is made in place, no new tensor


@pytest.mark.parametrize("kind", [WeightedMean, CoverageMean])
def test_the_result_is_stable_until_the_next_start_and_closes_the_round(
    kind: type[WeightedMean],
) -> None:
    agg = kind()
    (update,) = random_updates(1, seed=4)
    agg.start(update)
    agg.add(update, 3.0)
    first = {k: v.clone() for k, v in agg.result().items()}
    again = agg.result()  # asked twice: not scaled twice
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert torch.allclose(first["w"], update["w"])
    with pytest.raises(RuntimeError, match="added after result\\(\\); call start\\(\\) first"):
        agg.add(update, 1.0)
    agg.start(update)
    agg.add(update, 1.0)  # a new round opens again


def test_weighted_mean_keeps_dtype_and_refuses_zero_total() -> None:
    agg = WeightedMean()
    update = {"x": torch.ones(3, dtype=torch.bfloat16)}
    agg.start(update)
    agg.add(update, 0.0)
    with pytest.raises(ValueError, match="sum to 0"):
        agg.result()
    agg.add(update, 2.0)
    assert agg.result()["x"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match=">= 0"):
        agg.add(update, -1.0)


class Scale:
    """A test stage: multiplies on the client, divides on the server."""

    name = "scale"

    def __init__(self, factor: float, needs_clip: bool = False, linear_only: bool = False) -> None:
        self.factor = factor
        self.needs = Requirements(needs_clip_before=needs_clip, linear_aggregator_only=linear_only)

    def requires(self) -> Requirements:
        return self.needs

    def initial_state(self) -> StageState:
        return {"rounds": 0.0}

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        return {k: v * self.factor for k, v in update.items()}, {}

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        return {k: v / self.factor for k, v in combined.items()}

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        return {"rounds": state["rounds"] + 1}


class Median:
    name = "median"
    linear = False

    def start(self, template: Params) -> None: ...
    def add(self, update: Params, weight: float) -> None: ...
    def result(self) -> Params:
        return {}


def test_pipeline_runs_client_halves_then_server_halves_in_reverse() -> None:
    stage_a, stage_b = Scale(2.0), Scale(5.0)
    stage_b.name = "scale5"
    pipeline = Pipeline([stage_a, stage_b], WeightedMean())
    updates = [ClientUpdate(str(i), u, 1) for i, u in enumerate(random_updates(3))]
    config = pipeline.broadcast_config()  # the stages' states, as the broadcast carries them
    sent = [pipeline.client(u, config) for u in updates]
    assert torch.allclose(sent[0].delta["w"], updates[0].delta["w"] * 10)
    combined = pipeline.combine(sent, [1.0, 1.0, 1.0])
    expected = sum(u.delta["w"] for u in updates) / 3
    assert torch.allclose(combined["w"], expected, atol=1e-6)
    pipeline.end_round(RoundReport(1, 3))
    assert pipeline.states["scale"]["rounds"] == 1.0


def test_noise_without_clip_is_refused() -> None:
    with pytest.raises(PipelineError, match="needs a clipping stage before it"):
        Pipeline([Scale(1.0, needs_clip=True)], WeightedMean())
    Pipeline([ClipStage(1.0), Scale(1.0, needs_clip=True)], WeightedMean())


def test_secure_sum_behind_robust_aggregator_is_refused() -> None:
    with pytest.raises(PipelineError, match="only works with a linear aggregator"):
        Pipeline([Scale(1.0, linear_only=True)], Median())


def test_clip_bounds_the_norm_and_leaves_small_updates_alone() -> None:
    stage = ClipStage(1.0)
    big = {"w": torch.full((4,), 3.0)}
    clipped, metrics = stage.client(big, stage.initial_state())
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert metrics == {"norm": pytest.approx(6.0), "clipped": 1.0}
    small = {"w": torch.full((4,), 0.1)}
    same, _ = stage.client(small, stage.initial_state())
    assert torch.equal(same["w"], small["w"])


def test_fedavg_with_lr_one_lands_on_the_mean_model() -> None:
    params = {"w": torch.tensor([1.0, 2.0])}
    mean_delta = {"w": torch.tensor([0.5, -1.0])}
    FedAvg(ServerConfig(lr=1.0)).step(params, {"w": -mean_delta["w"]}, {})
    assert torch.equal(params["w"], torch.tensor([1.5, 1.0]))
    FedAvg(ServerConfig(lr=0.5)).step(params, {"w": torch.tensor([2.0, 2.0])}, {})
    assert torch.equal(params["w"], torch.tensor([0.5, 0.0]))


class Halving:
    """An estimator: the parameter halves after every round."""

    def initial(self) -> float:
        return 4.0

    def next(self, value: float, report: RoundReport) -> float:
        return value / 2


def test_an_estimated_clip_norm_moves_and_reaches_clients_through_the_broadcast() -> None:
    pipeline = Pipeline([ClipStage(Halving())], WeightedMean())
    update = ClientUpdate("a", {"w": torch.full((4,), 10.0)}, 1)  # norm 20
    assert pipeline.broadcast_config() == {"clip/max_norm": 4.0}
    pipeline.end_round(RoundReport(1, 1))
    config = pipeline.broadcast_config()
    assert config == {"clip/max_norm": 2.0}
    clipped = pipeline.client(update, config)
    assert math.isclose(float(clipped.delta["w"].norm()), 2.0, rel_tol=1e-6)
    assert clipped.metrics["clip/clipped"] == 1.0
    with pytest.raises(PipelineError, match="lacks stage 'clip'"):
        pipeline.client(update, {})


@st.composite
def held_rounds(draw: st.DrawFn) -> tuple[list[Params], list[float], list[Params]]:
    """Updates of random shapes (0-d to 3-d, bf16 or fp32), weights, and per-update
    coverage masks along rows, columns or the whole tensor (or none)."""
    shapes = draw(
        st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3), min_size=1, max_size=3)
    )
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    count = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    names = [f"t{i}" for i in range(len(shapes))]
    updates = [
        {
            n: torch.randn(tuple(s), generator=g).to(dtype)
            for n, s in zip(names, shapes, strict=True)
        }
        for _ in range(count)
    ]
    weights = draw(st.lists(st.floats(0.0, 10.0), min_size=count, max_size=count))
    masks: list[Params] = []
    for _ in range(count):
        cover: Params = {}
        for name, shape in zip(names, shapes, strict=True):
            kind = draw(st.sampled_from(["none", "rows", "cols", "all"]))
            if kind == "rows" and shape:
                cover[name] = (
                    torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=g) > 0.5
                ).float()
            elif kind == "cols" and len(shape) >= 2:
                cover[name] = (torch.rand((1, *shape[1:]), generator=g) > 0.5).float()
            elif kind == "all":
                cover[name] = (torch.rand(tuple(shape), generator=g) > 0.5).float()
        masks.append(cover)
    return updates, weights, masks


@settings(max_examples=60, deadline=None)
@given(held_rounds(), st.integers(1, 40), st.integers(0, 3000))
def test_held_and_blocked_folding_equals_folding_each_update_bit_for_bit(
    case: tuple[list[Params], list[float], list[Params]], block: int, hold_bytes: int
) -> None:
    """Holding updates and folding them block by block gives exactly the sums of folding
    each as it arrives (the same terms in the same order per entry), with and without
    coverage masks; and both equal a float64 numpy computation."""
    updates, weights, masks = case
    streaming, held = Accumulator(hold_bytes=0), Accumulator(hold_bytes=hold_bytes)
    original = mean_module.BLOCK
    try:
        mean_module.BLOCK = block
        for acc in (streaming, held):
            acc.start(updates[0])
            for update, weight, cover in zip(updates, weights, masks, strict=True):
                acc.add(update, weight, cover)
        got = held.sums
    finally:
        mean_module.BLOCK = original
    for name, total in streaming.sums.items():
        assert torch.equal(got[name], total), name
        expected = sum(
            w * u[name].double().numpy() * (c[name].double().numpy() if name in c else 1.0)
            for u, w, c in zip(updates, weights, masks, strict=True)
        )
        np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_an_accumulator_holds_updates_up_to_its_budget_only() -> None:
    update = {"w": torch.ones(256)}  # 1 KiB
    acc = Accumulator(hold_bytes=2048)
    acc.start(update)
    acc.add(update)
    acc.add(update)
    assert len(acc._held) == 2  # 2 KiB: within the budget
    acc.add(update)
    assert len(acc._held) == 1  # the first two were folded in to make room
    assert torch.equal(acc.sums["w"], torch.full((256,), 3.0)) and not acc._held
