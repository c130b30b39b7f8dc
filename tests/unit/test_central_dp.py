"""User-level DP-FedAvg's parts: the plan, adaptive clipping, Poisson cohorts, the fixed
denominator, the ledger, and the config's refusals."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from scipy import stats

from fedllm.aggregate.mean import WeightedMean
from fedllm.config import ConfigError, parse_config
from fedllm.pipeline.build import build_pipeline
from fedllm.pipeline.clip import ClipStage
from fedllm.pipeline.stage import Constant, Pipeline, RoundReport
from fedllm.privacy.accountant import RDP_ORDERS, PrivacyConfigError
from fedllm.privacy.central_dp.noise import GaussianNoiseStage
from fedllm.privacy.central_dp.quantile import CLIPPED_METRIC, QuantileClip
from fedllm.privacy.ledger import PrivacyLedger
from fedllm.privacy.plan import accounted_sampling, plan_central, update_noise_multiplier
from fedllm.privacy.settings import PrivacyConfig
from fedllm.server.plugin import RoundContext
from fedllm.server.sampling import PoissonSampler
from fedllm.types import ClientUpdate, RoundRecord

CENTRAL = {"dp": "central", "clip_norm": 0.1}
LOCAL = {"dp": "local", "clip_norm": 1.0, "noise_multiplier": 1.0}


def direct_epsilon(z: float, clients: int, cohort: int, rounds: int, delta: float) -> float:
    """dp-accounting by hand: fixed-size cohorts as sampling without replacement under
    replace-one, whose Gaussian takes std / l2-sensitivity = z C / 2C (issue #378 upstream)."""
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        clients, cohort, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def test_a_derived_noise_multiplier_spends_the_target_in_the_planned_rounds() -> None:
    privacy = PrivacyConfig(**CENTRAL, target_epsilon=3.0)
    plan = plan_central(privacy, clients=100, cohort=10, sampling="fixed", rounds=20)
    assert plan.derived
    z = plan.mechanism.noise_multiplier
    spent = direct_epsilon(z, 100, 10, 20, privacy.delta)
    assert spent <= 3.0 and spent > 3.0 * 0.99  # the smallest such noise, not any
    assert direct_epsilon(z * 0.98, 100, 10, 20, privacy.delta) > 3.0


def test_a_budget_below_one_round_is_refused_before_training() -> None:
    privacy = PrivacyConfig(**CENTRAL, noise_multiplier=0.5, target_epsilon=0.1)
    with pytest.raises(PrivacyConfigError, match="below what one round spends"):
        plan_central(privacy, clients=10, cohort=5, sampling="fixed", rounds=3)


def test_adaptive_clipping_shares_the_accounted_noise_with_the_count() -> None:
    z, count = 1.0, 2.0
    z_update = update_noise_multiplier(z, count)
    assert z_update > z
    # Andrew et al., Theorem 1: the two queries together are one Gaussian of multiplier z
    assert (z_update**-2 + (2 * count) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    assert update_noise_multiplier(z, 0.0) == z
    with pytest.raises(PrivacyConfigError, match="clip_count_noise"):
        update_noise_multiplier(1.0, 0.4)
    privacy = PrivacyConfig(**CENTRAL, noise_multiplier=1.0, adaptive_clip=True)
    plan = plan_central(privacy, clients=400, cohort=100, sampling="fixed", rounds=5)
    assert plan.count_noise == 100 / 20  # Andrew et al.'s default: expected cohort / 20
    assert plan.update_noise == pytest.approx(update_noise_multiplier(1.0, 5.0))


def test_only_uniform_and_poisson_cohorts_are_accounted() -> None:
    assert accounted_sampling("uniform") == "fixed"
    assert accounted_sampling("poisson") == "poisson"
    with pytest.raises(PrivacyConfigError, match="'size'"):
        accounted_sampling("size")


def report(round_num: int, clipped: list[float], seed: int = 0) -> RoundReport:
    metrics = [{CLIPPED_METRIC: c} for c in clipped]
    return RoundReport(round_num, len(clipped), metrics, float(len(clipped)), seed)


def test_the_quantile_clip_moves_geometrically_toward_its_quantile() -> None:
    clip = QuantileClip(1.0, quantile=0.5, lr=0.2, count_noise=0.0)
    assert clip.next(1.0, report(1, [0.0] * 4)) == pytest.approx(math.exp(-0.2 * 0.5))
    assert clip.next(1.0, report(1, [1.0] * 4)) == pytest.approx(math.exp(0.2 * 0.5))
    assert clip.next(1.0, report(1, [1.0, 0.0])) == pytest.approx(1.0)
    assert clip.next(0.7, RoundReport(1, 0)) == 0.7  # nothing accepted: nothing learnt
    poisson = QuantileClip(1.0, quantile=0.5, lr=0.2, count_noise=0.0, expected=8.0)
    # centred (Andrew et al.): (4 x 1/2) / 8 + 1/2 = 0.75 unclipped, not 4 / 8
    assert poisson.next(1.0, report(1, [0.0] * 4)) == pytest.approx(math.exp(-0.2 * 0.25))


def test_the_quantile_clip_finds_the_quantile_of_the_norms_through_the_clip_stage() -> None:
    """Clients with log-normal update norms: the clip settles near the target quantile."""
    rng = np.random.default_rng(0)
    clip = QuantileClip(0.01, quantile=0.7, lr=0.2, count_noise=1.0)
    stage = ClipStage(clip)
    state = stage.initial_state()
    values = []
    for round_num in range(1, 301):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=50)
        metrics = []
        for norm in norms:
            update = {"w": torch.tensor([float(norm), 0.0], dtype=torch.float64)}
            _, reported = stage.client(update, state)
            metrics.append({f"clip/{k}": v for k, v in reported.items()})
        state = stage.next_state(state, RoundReport(round_num, 50, metrics, 50.0, round_num))
        values.append(state["max_norm"])
    settled = float(np.median(values[150:]))
    truth = float(np.exp(0.5 * stats.norm.ppf(0.7)))  # the 0.7 quantile of the norms
    assert settled == pytest.approx(truth, rel=0.1)


def test_the_noisy_count_is_seeded_by_the_round() -> None:
    clip = QuantileClip(1.0, quantile=0.5, lr=0.2, count_noise=3.0)
    first = clip.next(1.0, report(1, [0.0, 1.0], seed=5))
    assert clip.next(1.0, report(1, [0.0, 1.0], seed=5)) == first
    assert clip.next(1.0, report(1, [0.0, 1.0], seed=6)) != first
    assert first != 1.0  # the noise moved it


def test_poisson_cohorts_include_each_client_with_the_sampling_rate() -> None:
    clients = [f"c{i}" for i in range(40)]
    sampler = PoissonSampler(clients, expected=10, seed=3)
    rounds = 2000
    counts = dict.fromkeys(clients, 0)
    sizes = []
    for r in range(1, rounds + 1):
        cohort = sampler.cohort(r)
        assert cohort == [c for c in clients if c in cohort]  # client order
        sizes.append(len(cohort))
        for c in cohort:
            counts[c] += 1
    assert sampler.cohort(7) == sampler.cohort(7)
    assert np.mean(sizes) == pytest.approx(10, rel=0.03)
    assert np.var(sizes) == pytest.approx(40 * 0.25 * 0.75, rel=0.15)  # binomial, not fixed
    # every client's inclusions are Binomial(rounds, 1/4): a chi-square over clients
    expected = rounds * 0.25
    statistic = sum((n - expected) ** 2 / (expected * 0.75) for n in counts.values())
    assert 0.001 < stats.chi2.sf(statistic, len(clients)) < 0.999


def test_under_poisson_sampling_the_noisy_sum_is_divided_by_the_expected_cohort() -> None:
    z, clip, expected = 0.7, 2.0, 10.0
    stage = GaussianNoiseStage(z, Constant(clip), expected=expected)
    pipeline = Pipeline([ClipStage(clip), stage], WeightedMean())
    g = torch.Generator().manual_seed(1)
    batch = [
        ClientUpdate(f"c{i}", {"w": 0.01 * torch.randn(300, 300, generator=g)}, 1) for i in range(6)
    ]
    pipeline.start(batch[0].delta)
    for update in batch:
        pipeline.add(pipeline.client(update, pipeline.broadcast_config()), 1.0)
    out = pipeline.finish(RoundReport(1, 6, total_weight=6.0, seed=4))["w"].double()
    total = sum(u.delta["w"].double() for u in batch)
    noise = out * expected - total  # what was added to the sum
    statistic = float((noise / (z * clip)).pow(2).sum())
    assert 0.001 < stats.chi2.sf(statistic, noise.numel()) < 0.999
    zero = GaussianNoiseStage(0.0, Constant(clip), expected=expected)
    mean = {"w": torch.full((3,), 0.5)}
    scaled = zero.server(mean, zero.initial_state(), RoundReport(1, 4, total_weight=4.0))
    assert torch.allclose(scaled["w"], torch.full((3,), 0.5 * 4 / expected))


def play(ledger: PrivacyLedger, round_num: int) -> RoundRecord:
    record = RoundRecord(round_num)
    ledger.end_round(RoundContext(round_num, [], {}, 0, record))
    return record


def test_the_ledger_reports_dp_accounting_s_epsilon_and_stops_before_the_budget() -> None:
    privacy = PrivacyConfig(**CENTRAL, noise_multiplier=2.2, target_epsilon=6.0)
    plan = plan_central(privacy, clients=20, cohort=5, sampling="fixed", rounds=50)
    ledger = PrivacyLedger(plan)
    allowed = max(r for r in range(1, 60) if direct_epsilon(2.2, 20, 5, r, 1e-5) <= 6.0)
    for r in range(1, allowed + 1):
        assert ledger.stop_reason() is None
        record = play(ledger, r)
        assert record.extra["epsilon"] == pytest.approx(direct_epsilon(2.2, 20, 5, r, 1e-5))
    reason = ledger.stop_reason()
    assert reason is not None and f"after {allowed} round(s)" in reason
    assert ledger.summary()["epsilon"] <= 6.0
    # restored from its checkpoint, a fresh ledger is where the old one was
    tensors, meta = ledger.state()
    again = PrivacyLedger(plan_central(privacy, clients=20, cohort=5, sampling="fixed", rounds=99))
    again.restore(tensors, meta)
    assert again.stop_reason() == reason
    assert again.summary() == ledger.summary()


def test_a_restored_ledger_keeps_the_noise_it_charged() -> None:
    privacy = PrivacyConfig(**CENTRAL, target_epsilon=4.0)
    first = PrivacyLedger(plan_central(privacy, clients=20, cohort=5, sampling="fixed", rounds=4))
    play(first, 1)
    _, meta = first.state()
    longer = PrivacyLedger(plan_central(privacy, clients=20, cohort=5, sampling="fixed", rounds=8))
    assert longer.accountant.mechanism.noise_multiplier != meta["noise_multiplier"]
    longer.restore({}, meta)
    assert longer.accountant.mechanism.noise_multiplier == meta["noise_multiplier"]
    for r in range(2, 5):
        assert longer.stop_reason() is None
        play(longer, r)
    assert longer.stop_reason() is not None  # the 4 rounds the noise was derived for
    assert longer.summary()["epsilon"] <= 4.0


def central(**server: object) -> dict[str, object]:
    return {
        "privacy": {"dp": "central", "clip_norm": 0.1, "noise_multiplier": 1.0},
        "server": {"weighting": "uniform", **server},
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"privacy": {"dp": "central", "clip_norm": 0.1, "noise_multiplier": 1.0}},
            "server.weighting = 'uniform'",
        ),
        (central(sampling="size"), "server.sampling = 'uniform' or 'poisson'"),
        ({**central(), "pipeline": {"clip_norm": 1.0}}, "remove pipeline.clip_norm"),
        ({"privacy": {"noise_multiplier": 1.0}}, "privacy.dp = 'none'"),
        ({"privacy": {"dp": "central", "noise_multiplier": 1.0}}, "needs privacy.clip_norm"),
        ({"privacy": {"dp": "local", "clip_norm": 1.0}}, "privacy.target_epsilon to derive"),
        (
            {
                "privacy": {
                    "dp": "local",
                    "clip_norm": 1.0,
                    "noise_multiplier": 1.0,
                    "adaptive_clip": True,
                }
            },
            "adaptive_clip applies to privacy.dp = 'central'",
        ),
        ({**central(), "federation": {"mode": "local"}}, "federation.mode = 'local'"),
        (
            {"privacy": {**LOCAL, "accountant": "pld"}},
            "only the RDP accountant",
        ),
        (  # the same check as a run's, at load (`fedllm config` said nothing before)
            {
                **central(),
                "privacy": {
                    "dp": "central",
                    "clip_norm": 0.1,
                    "noise_multiplier": 1.0,
                    "accountant": "pld",
                },
            },
            "cannot account fixed-size cohorts",
        ),
        (
            {"privacy": LOCAL, "client": {"fp16": True}, "run": {"device": "cuda"}},
            "set client.fp16 = false",
        ),
        ({"privacy": LOCAL, "federation": {"mode": "local"}}, "federation.mode = 'local'"),
        (
            {"privacy": LOCAL, "public": {"source": "pydoc", "mix_ratio": 0.25}},
            "cannot be combined with public",
        ),
        (
            {**central(), "client": {"drift_correction": "scaffold"}},
            "cannot be combined with client.drift_correction = 'scaffold'",
        ),
        (
            {**central(), "server": {"weighting": "uniform", "normalize": "fednova"}},
            "cannot be combined with server.normalize = 'fednova'",
        ),
    ],
)
def test_the_config_refuses_what_the_guarantee_cannot_cover(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def count_sensitivity(neighbours: str) -> float:
    """How far one client moves the statistic the clip's count noise is added to,
    measured on the code's own statistic over every small cohort and its neighbours
    (``add``: one client more; ``replace``: one client's bit flipped)."""
    from fedllm.privacy.central_dp.quantile import centred_count

    def stat(bits: list[float]) -> float:
        return centred_count([{CLIPPED_METRIC: b} for b in bits])

    worst = 0.0
    for n in range(1, 6):
        for pattern in range(2**n):
            bits = [float(pattern >> i & 1) for i in range(n)]
            if neighbours == "add":
                moves = [abs(stat([*bits, b]) - stat(bits)) for b in (0.0, 1.0)]
            else:
                moves = [abs(stat([1.0 - bits[0], *bits[1:]]) - stat(bits))]
            worst = max(worst, *moves)
    return worst


@pytest.mark.parametrize(
    ("sampling", "clients", "cohort", "rounds"), [("poisson", 100, 10, 100), ("fixed", 40, 8, 30)]
)
def test_adaptive_clipping_spends_what_the_combined_mechanism_does(
    sampling: str, clients: int, cohort: int, rounds: int
) -> None:
    """The sum and the count as one Gaussian mechanism, from first principles: scaled to
    unit noise per coordinate, its sensitivity is sqrt((S_sum / z_update C)^2 +
    (S_count / count_noise)^2), with S_sum = C (add-or-remove) or 2C (replace-one) and
    S_count measured on the code's statistic; dp-accounting is then given std over
    sensitivity directly. Under Poisson with q = 0.1, z = 1, count noise 1, the
    uncentred count (S_count = 1) spent 13.95 while 7.90 was reported."""
    privacy = PrivacyConfig(
        **CENTRAL, noise_multiplier=1.0, adaptive_clip=True, clip_count_noise=1.0
    )
    plan = plan_central(privacy, clients, cohort, sampling, rounds)  # type: ignore[arg-type]
    reported = plan.accountant().epsilon(rounds)
    add_or_remove = sampling == "poisson"
    s_sum = 1.0 if add_or_remove else 2.0  # in units of C
    s_count = count_sensitivity("add" if add_or_remove else "replace")
    effective = ((s_sum / plan.update_noise) ** 2 + (s_count / plan.count_noise) ** 2) ** -0.5
    if add_or_remove:
        accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        event = dp_accounting.PoissonSampledDpEvent(
            cohort / clients, dp_accounting.GaussianDpEvent(effective)
        )
    else:
        accountant = rdp.RdpAccountant(
            orders=list(RDP_ORDERS),
            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
        )
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            clients, cohort, dp_accounting.GaussianDpEvent(effective)
        )
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    assert reported == pytest.approx(float(accountant.get_epsilon(privacy.delta)), rel=1e-6)


def test_the_noisy_fraction_under_poisson_is_centred_then_shifted_back() -> None:
    """(sum(b - 1/2) + noise) / expected + 1/2: with no noise and a cohort smaller than
    expected, the fraction is not sum(b) / expected."""
    clip = QuantileClip(1.0, 0.5, 1.0, 0.0, expected=4.0)
    metrics = [{CLIPPED_METRIC: 0.0}, {CLIPPED_METRIC: 0.0}]  # two unclipped of 4 expected
    report = RoundReport(1, 2, metrics, 2.0, seed=0)
    fraction = (2 * 0.5) / 4.0 + 0.5  # 0.75, where the uncentred count gave 0.5
    assert clip.next(1.0, report) == pytest.approx(math.exp(-1.0 * (fraction - 0.5)))


def test_adaptive_clipping_refuses_replies_without_their_clipped_bit() -> None:
    """A protocol that keeps the bit from the server must not count the client as
    unclipped (the clip would shrink every round whatever the data)."""
    clip = QuantileClip(1.0, 0.5, 0.2, count_noise=0.0)
    report = RoundReport(1, 2, [{CLIPPED_METRIC: 1.0}, {"steps": 3.0}], 2.0, seed=0)
    with pytest.raises(ValueError, match="1 of 2 replies lack it"):
        clip.next(1.0, report)


@pytest.mark.parametrize(("sampling", "expected"), [("poisson", 4.0), ("uniform", None)])
def test_the_pipeline_central_dp_brings_divides_by_the_expected_cohort_under_poisson(
    sampling: str, expected: float | None
) -> None:
    """build_pipeline takes central DP's stages through the registry: the clip, then noise
    whose mean divides by the expected cohort under Poisson sampling (the actual count
    would leak who took part), by the actual one for fixed-size cohorts."""
    config = parse_config(
        central(sampling=sampling, clients_per_round=4)
        | {"data": {"num_clients": 10}, "pipeline": {}}
    )
    stages = build_pipeline(config, population=10).stages
    assert [type(s) for s in stages] == [ClipStage, GaussianNoiseStage]
    noise = stages[1]
    assert isinstance(noise, GaussianNoiseStage)
    assert noise.expected == expected and noise.noise_multiplier == pytest.approx(1.0)


@pytest.mark.parametrize("aggregator", ["median", "krum"])
def test_central_dp_refuses_a_robust_aggregator_at_load(aggregator: str) -> None:
    raw = central(aggregator=aggregator, clients_per_round=5, min_clients=5)
    with pytest.raises(ConfigError, match=f"server.aggregator = '{aggregator}' combines them"):
        parse_config(raw | {"data": {"num_clients": 6}})
