"""run.randomness: privacy draws that nobody who knows the config can recompute.

The adversary of these tests knows everything in the config (the seed included), as
every party of a deployment does, and rebuilds the mechanism in reproducible mode: the
best guess it has. Under 'secure' its guess must be wrong and two runs must differ;
under 'reproducible' it is right (which is why that mode is for experiments only)."""

from __future__ import annotations

import pytest
import torch

from fedllm.config import ConfigError
from fedllm.data import Example
from fedllm.pipeline.stage import Constant, RoundReport
from fedllm.privacy.central_dp.noise import GaussianNoiseStage
from fedllm.privacy.central_dp.quantile import CLIPPED_METRIC, QuantileClip
from fedllm.privacy.local_dp.dpsgd import DPSGDHook
from fedllm.seeding import privacy_seed
from tests.support.runs import tiny_config

DP = (
    "privacy.dp='central'",
    "privacy.clip_norm=0.05",
    "privacy.noise_multiplier=1.0",
    "server.weighting='uniform'",
)


def central_noise(secure: bool, seed: int = 7) -> torch.Tensor:
    stage = GaussianNoiseStage(1.0, Constant(1.0), secure=secure)
    state = stage.initial_state()
    report = RoundReport(3, 4, total_weight=4.0, seed=seed)
    return stage.server({"w": torch.zeros(1000, dtype=torch.float64)}, state, report)["w"]


def test_the_server_noise_is_recomputable_only_in_reproducible_mode() -> None:
    assert torch.equal(central_noise(False), central_noise(False))  # the adversary's guess
    first, second = central_noise(True), central_noise(True)
    guess = central_noise(False)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, guess) and not torch.allclose(second, guess)
    assert first.std() == pytest.approx(0.25, rel=0.15)  # the same calibration: z C / n


def dp_sgd_noise(secure: bool) -> torch.Tensor:
    params = [torch.nn.Parameter(torch.zeros(500))]
    hook = DPSGDHook(1.0, 1.0, lot=4, micro_batches=1, seed=123, secure=secure)
    hook.begin([], params, {})
    hook.on_gradients(params)  # no example folded: the gradient is the noise alone
    assert params[0].grad is not None
    return params[0].grad.clone()


def dp_sgd_lot(secure: bool) -> list[int]:
    data = [Example([i], [i]) for i in range(1000)]
    hook = DPSGDHook(1.0, 1.0, lot=8, micro_batches=1, seed=123, secure=secure)
    return [e.input_ids[0] for e in next(hook.batches(data, 8, seed=5))]


def test_a_client_s_dp_sgd_noise_and_lots_are_hidden_from_the_server() -> None:
    guess = dp_sgd_noise(False)
    assert torch.equal(guess, dp_sgd_noise(False))
    first, second = dp_sgd_noise(True), dp_sgd_noise(True)
    assert not torch.allclose(first, guess) and not torch.allclose(first, second)
    assert dp_sgd_lot(False) == dp_sgd_lot(False)
    assert dp_sgd_lot(True) != dp_sgd_lot(False)


def test_the_clip_count_noise_is_hidden_in_secure_mode() -> None:
    metrics = [{CLIPPED_METRIC: 0.0}] * 4
    report = RoundReport(1, 4, metrics, 4.0, seed=9)

    def clip(secure: bool) -> float:
        return QuantileClip(1.0, 0.5, 0.2, count_noise=2.0, secure=secure).next(1.0, report)

    assert clip(False) == clip(False)
    assert len({clip(True), clip(True), clip(False)}) == 3


def test_cohort_seeds_are_secret_in_secure_mode() -> None:
    assert privacy_seed(42, secure=False) == 42
    first, second = privacy_seed(42, secure=True), privacy_seed(42, secure=True)
    assert first != second and 42 not in (first, second)


def test_auto_is_secure_on_flower_with_a_privacy_mechanism_and_reproducible_is_refused() -> None:
    assert tiny_config(*DP).randomness == "reproducible"
    assert tiny_config(*DP, "run.randomness='secure'").secure_randomness
    flower = (*DP, "runtime.engine='flower'")
    assert tiny_config(*flower).randomness == "secure"
    assert tiny_config("runtime.engine='flower'").randomness == "reproducible"  # nothing to hide
    with pytest.raises(ConfigError, match="run.randomness = 'secure'"):
        tiny_config(*flower, "run.randomness='reproducible'")


def test_the_banner_says_which_randomness_a_private_run_uses() -> None:
    from fedllm.federation.guarantees import privacy_banner

    assert privacy_banner(tiny_config()) == ""
    line = privacy_banner(tiny_config(*DP))
    assert "DP-FedAvg" in line and "randomness reproducible" in line and "recomputable" in line
    assert "randomness secure (OS CSPRNG)" in privacy_banner(
        tiny_config(*DP, "run.randomness='secure'")
    )


def test_a_flower_node_draws_dp_sgd_noise_from_the_csprng_whatever_the_config_says() -> None:
    """The config a node trains with comes from the server: a node never lets it choose
    reproducible noise for DP-SGD."""
    from types import SimpleNamespace
    from typing import Any, cast

    from fedllm.composition import AlgorithmSetup
    from fedllm.privacy.local_dp import LocalDP

    config = tiny_config(
        "privacy.dp='local'", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0"
    )
    assert config.randomness == "reproducible"
    ws = cast(Any, SimpleNamespace(config=config, data=None))

    def plugin_secure(partial: bool) -> bool:
        setup = AlgorithmSetup(ws, "federated", {"a": 40, "b": 30}, cast(Any, None), {}, partial)
        algorithm = LocalDP().build(setup)
        assert algorithm is not None and algorithm.client is not None
        return bool(algorithm.client.secure)

    assert plugin_secure(partial=True) and not plugin_secure(partial=False)


def test_the_secagg_graph_is_secret_in_secure_mode() -> None:
    from fedllm.secure.secagg.server import SecAggExchange, SecAggSettings
    from fedllm.server.plugin import RoundContext
    from fedllm.types import RoundRecord

    cohort = [f"c{i}" for i in range(12)]

    def graph(secure: bool) -> dict[str, tuple[str, ...]]:
        settings = SecAggSettings(31, 0.05, 12, 4, None, 2, None, secure)
        ctx = RoundContext(1, cohort, {"w": torch.zeros(8)}, 5, RoundRecord(round=1))
        server = SecAggExchange(settings)._server(ctx)
        assert not isinstance(server, str)
        return {c: tuple(sorted(server.graph[c])) for c in cohort}

    assert graph(False) == graph(False)  # anyone with the config knows the neighbours
    secret = [graph(True) for _ in range(3)]
    assert any(g != graph(False) for g in secret) and len({str(g) for g in secret}) > 1
