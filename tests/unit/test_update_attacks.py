"""The update attacks (``fedllm.security.attacks``) against their papers' formulas,
written out here with numpy (and scipy's normal quantile) on random updates: each one
changes the update the way it claims; the colluding attacks see only the colluders'
own updates; the client half, the colluders' channel and the record in a round; the
config's refusals."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from fedllm.aggregate.mean import WeightedMean
from fedllm.client.plugin import ClientContext
from fedllm.client.store import ClientStateStore
from fedllm.components import active_algorithms
from fedllm.config import ConfigError
from fedllm.pipeline.stage import WeightedUpdate
from fedllm.security.attacks.alie import Alie, AlieSettings, z_max
from fedllm.security.attacks.collusion import Colluders, Collusion
from fedllm.security.attacks.free_ride import FreeRide, FreeRideSettings
from fedllm.security.attacks.ipm import Ipm, IpmSettings
from fedllm.security.attacks.min_max import MinMax, MinMaxSettings, MinSum
from fedllm.security.attacks.noise import Noise, NoiseSettings
from fedllm.security.attacks.own_update import OwnUpdatePlugin
from fedllm.security.attacks.record import AttackRecord
from fedllm.security.attacks.scale import Scale, ScaleSettings
from fedllm.security.attacks.sign_flip import SignFlip
from fedllm.security.attacks.update import Sight
from fedllm.security.defenses.median import CoordinateMedian
from fedllm.server.plugin import RoundContext
from fedllm.types import ClientUpdate, Params, RoundRecord
from tests.support.runs import tiny_config

SHAPES = {"a": (3, 5), "b": (7,)}


def update_of(rng: np.random.Generator, scale: float = 1.0) -> Params:
    return {k: torch.tensor(rng.normal(0, scale, s)) for k, s in SHAPES.items()}


def sight(**kw: object) -> Sight:
    fields: dict[str, object] = {"client_id": "m", "round": 1, "seed": 7}
    return Sight(**(fields | kw))  # type: ignore[arg-type]


def flat(params: Params) -> np.ndarray:
    return np.concatenate([params[k].double().numpy().ravel() for k in SHAPES])


def colluders_rows(seed: int, m: int, d: int = 40) -> np.ndarray:
    """``m`` updates around a common direction (float64): what colluders with similar
    data would send."""
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 1.0, d) + rng.normal(0, 0.5, (m, d))


# --- attacks on the client's own update ----------------------------------------------


def test_sign_flip_sends_minus_the_update() -> None:
    delta = update_of(np.random.default_rng(0))
    sent = SignFlip().craft(delta, sight())
    for k in SHAPES:
        assert torch.equal(sent[k], -delta[k])


def test_scale_multiplies_by_the_factor_exactly_and_defaults_to_n_over_eta() -> None:
    delta = update_of(np.random.default_rng(1))
    sent = Scale(ScaleSettings(factor=7.25)).craft(delta, sight())
    for k in SHAPES:
        assert torch.equal(sent[k], delta[k] * 7.25)
    default = Scale().craft(delta, sight(cohort=8, server_lr=0.5))  # gamma = n / eta = 16
    for k in SHAPES:
        assert torch.equal(default[k], delta[k] * 16.0)


@given(
    seed=st.integers(0, 2**32 - 1),
    factor=st.floats(0.5, 200.0),
    max_norm=st.floats(0.1, 50.0),
)
def test_constrain_and_scale_boosts_by_gamma_up_to_the_norm_bound(
    seed: int, factor: float, max_norm: float
) -> None:
    delta = update_of(np.random.default_rng(seed))
    sent = Scale(ScaleSettings(factor=factor, max_norm=max_norm)).craft(delta, sight())
    # Bagdasaryan et al.: gamma = S / ||X - G|| when the bound S binds, else gamma
    length = float(np.linalg.norm(flat(delta)))
    boost = min(factor, max_norm / length)
    np.testing.assert_allclose(flat(sent), boost * flat(delta), rtol=1e-12)
    assert np.linalg.norm(flat(sent)) <= max_norm * (1 + 1e-12)
    if factor * length >= max_norm:
        assert np.linalg.norm(flat(sent)) == pytest.approx(max_norm, rel=1e-12)


def test_constrain_and_scale_leaves_a_zero_update_zero_and_refuses_a_bad_bound() -> None:
    zero = {k: torch.zeros(s, dtype=torch.float64) for k, s in SHAPES.items()}
    sent = Scale(ScaleSettings(factor=10.0, max_norm=1.0)).craft(zero, sight())
    assert all(torch.equal(sent[k], zero[k]) for k in SHAPES)
    with pytest.raises(ConfigError, match=r"attack\.scale\.max_norm"):
        tiny_config("attack.update=scale", "attack.fraction=0.25", "attack.scale.max_norm=0")


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_noise_has_the_claimed_standard_deviation(mode: str) -> None:
    big = {"w": torch.full((400, 500), 3.0)}  # 200,000 entries
    sent = Noise(NoiseSettings(std=0.02, mode=mode)).craft(big, sight())
    noise = (sent["w"] - (big["w"] if mode == "add" else 0.0)).double().numpy()
    # the sample std of 200k normal draws is within 1% of sigma (about 6 standard errors)
    assert abs(noise.std() / 0.02 - 1) < 0.01
    assert abs(noise.mean()) < 6 * 0.02 / math.sqrt(noise.size)
    again = Noise(NoiseSettings(std=0.02, mode=mode)).craft(big, sight())
    other = Noise(NoiseSettings(std=0.02, mode=mode)).craft(big, sight(seed=8))
    assert torch.equal(again["w"], sent["w"]) and not torch.equal(other["w"], sent["w"])


def test_free_riding_sends_zero_or_the_last_global_step_seen() -> None:
    rng = np.random.default_rng(2)
    delta, now, before = update_of(rng), update_of(rng), update_of(rng)
    zero = FreeRide().craft(delta, sight(broadcast=now, previous=before))
    assert all(torch.equal(zero[k], torch.zeros(SHAPES[k], dtype=torch.float64)) for k in SHAPES)
    stale = FreeRide(FreeRideSettings(mode="stale"))
    assert stale.remembers_broadcast and not FreeRide().remembers_broadcast
    sent = stale.craft(delta, sight(broadcast=now, previous=before))
    for k in SHAPES:
        assert torch.equal(sent[k], now[k] - before[k])
    first = stale.craft(delta, sight(broadcast=now, previous=None))  # nothing seen before
    assert all(not first[k].any() for k in SHAPES)
    other_shape = dict(before, b=torch.ones(3, dtype=torch.float64))
    mixed = stale.craft(delta, sight(broadcast=now, previous=other_shape))
    assert torch.equal(mixed["a"], now["a"] - before["a"]) and not mixed["b"].any()


# --- colluding attacks ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(50, 12), (10, 2), (10, 4), (7, 3), (2, 1), (1, 1)])
def test_alie_z_max_is_the_papers_quantile(n: int, m: int) -> None:
    s = max(1, math.floor(n / 2 + 1) - m)
    expected = norm.ppf((n - s) / n) if 0 < (n - s) / n < 1 else 0.0
    assert z_max(n, m) == pytest.approx(expected, abs=1e-12)
    assert z_max(n, m) >= 0


@given(st.integers(2, 9), st.integers(0, 2**32 - 1), st.floats(0.0, 3.0) | st.none())
def test_alie_sends_mu_minus_z_sigma_of_the_colluders(m: int, seed: int, z: float | None) -> None:
    rows = colluders_rows(seed, m)
    n = 3 * m
    attack = Alie(AlieSettings(z=z))
    crafted = attack.craft(torch.tensor(rows), n).numpy()
    mu, sigma = rows.mean(axis=0), rows.std(axis=0, ddof=1)
    used = z if z is not None else norm.ppf((n - (math.floor(n / 2 + 1) - m)) / n)
    np.testing.assert_allclose(crafted, mu - used * sigma, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(crafted - mu) <= used * sigma + 1e-12)  # within z sigma of mu


def test_alie_with_one_colluder_sends_its_own_update() -> None:
    row = colluders_rows(3, 1)
    assert np.array_equal(Alie().craft(torch.tensor(row), 4).numpy(), row[0])


@given(st.integers(1, 9), st.integers(0, 2**32 - 1), st.floats(0.01, 10.0))
def test_ipm_sends_minus_epsilon_times_the_colluders_mean(m: int, seed: int, eps: float) -> None:
    rows = colluders_rows(seed, m + 6)
    own, benign = rows[:m], rows[m:]
    crafted = Ipm(IpmSettings(epsilon=eps)).craft(torch.tensor(own), len(rows)).numpy()
    np.testing.assert_allclose(crafted, -eps * own.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert float(crafted @ benign.mean(axis=0)) < 0  # the inner product turns negative


def perturbation_of(rows: np.ndarray, kind: str) -> np.ndarray:
    mu = rows.mean(axis=0)
    if kind == "unit":
        return -mu / np.linalg.norm(mu)
    if kind == "std":
        return -rows.std(axis=0, ddof=1)
    return -np.sign(mu)


def fits(rows: np.ndarray, crafted: np.ndarray, budget: str, slack: float = 1e-9) -> bool:
    """Shejwalkar & Houmansadr's constraint for ``crafted``, over the colluders' rows."""
    pairs = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    to_crafted = ((rows - crafted) ** 2).sum(axis=1)
    if budget == "max":  # max_i ||m - x_i|| <= max_ij ||x_i - x_j||
        return bool(to_crafted.max() <= pairs.max() * (1 + slack))
    return bool(to_crafted.sum() <= pairs.sum(axis=1).max() * (1 + slack))


def halving_search(rows: np.ndarray, p: np.ndarray, budget: str) -> float:
    """The paper's search for gamma, from gamma_init = 10, to a step of 1e-9 here (its
    1e-5 is too coarse to compare)."""
    mu = rows.mean(axis=0)
    gamma, step, good = 10.0, 10.0, 0.0
    while abs(good - gamma) > 1e-9:
        if fits(rows, mu + gamma * p, budget, slack=0.0):
            good, gamma = gamma, gamma + step / 2
        else:
            gamma -= step / 2
        step /= 2
    return good


@pytest.mark.parametrize("perturbation", ["unit", "std", "sign"])
@pytest.mark.parametrize(("cls", "budget"), [(MinMax, "max"), (MinSum, "sum")])
@pytest.mark.parametrize("seed", range(4))
def test_min_max_and_min_sum_move_as_far_as_the_budget_allows(
    cls: type[MinMax], budget: str, perturbation: str, seed: int
) -> None:
    rows = colluders_rows(seed, 3 + seed)
    attack = cls(MinMaxSettings(perturbation=perturbation))  # type: ignore[arg-type]
    crafted = attack.craft(torch.tensor(rows), 20).numpy()
    gamma = attack.gamma(torch.tensor(rows))
    p = perturbation_of(rows, perturbation)
    np.testing.assert_allclose(crafted, rows.mean(axis=0) + gamma * p, rtol=1e-12, atol=1e-12)
    assert gamma > 0 and fits(rows, crafted, budget)
    assert not fits(rows, rows.mean(axis=0) + gamma * (1 + 1e-6) * p, budget)  # the largest
    if gamma < 20:  # within the paper's search range: the same gamma
        assert gamma == pytest.approx(halving_search(rows, p, budget), rel=1e-7)


def test_min_max_with_no_direction_sends_the_mean() -> None:
    row = colluders_rows(5, 1)
    crafted = MinMax(MinMaxSettings(perturbation="std")).craft(torch.tensor(row), 5)
    assert np.array_equal(crafted.numpy(), row[0])


# --- the colluders' channel ----------------------------------------------------------


def round_of(rng: np.random.Generator, ids: list[str]) -> list[WeightedUpdate]:
    base = update_of(rng)
    return [
        WeightedUpdate(
            c,
            {k: v + 0.1 * torch.tensor(rng.normal(size=v.shape)) for k, v in base.items()},
            1.0 + i,
        )
        for i, c in enumerate(ids)
    ]


REFERENCE: Params = {k: torch.zeros(s, dtype=torch.float64) for k, s in SHAPES.items()}
IDS = ["c0", "c1", "c2", "c3", "c4", "c5"]
MALICIOUS = frozenset({"c1", "c4"})


@pytest.mark.parametrize(
    "attack", [Alie(), Ipm(), MinMax(), MinSum(MinMaxSettings(perturbation="sign"))]
)
def test_what_colluders_send_ignores_every_benign_update(attack: Alie) -> None:
    colluders = Colluders(attack, MALICIOUS, from_round=1, round=1)
    updates = round_of(np.random.default_rng(4), IDS)
    poisoned = colluders.poison(updates, REFERENCE)
    changed = [  # a benign client sends something else entirely
        WeightedUpdate(u.client_id, {k: v * -50 for k, v in u.delta.items()}, u.weight)
        if u.client_id == "c2"
        else u
        for u in updates
    ]
    again = colluders.poison(changed, REFERENCE)
    own = torch.tensor(np.stack([flat(u.delta) for u in updates if u.client_id in MALICIOUS]))
    expected = attack.craft(own, len(IDS)).numpy()
    for before, after, honest in zip(poisoned, again, updates, strict=True):
        assert before.weight == honest.weight
        if honest.client_id in MALICIOUS:
            assert np.array_equal(flat(before.delta), expected)
            assert np.array_equal(flat(after.delta), expected)
        else:
            assert before.delta is honest.delta


def test_colluders_wait_for_from_round_and_for_a_malicious_update() -> None:
    updates = round_of(np.random.default_rng(5), IDS)
    early = Colluders(Ipm(), MALICIOUS, from_round=3, round=2).poison(updates, REFERENCE)
    assert all(a.delta is b.delta for a, b in zip(early, updates, strict=True))
    benign = [u for u in updates if u.client_id not in MALICIOUS]
    alone = Colluders(Ipm(), MALICIOUS, from_round=1, round=1).poison(benign, REFERENCE)
    assert all(a.delta is b.delta for a, b in zip(alone, benign, strict=True))


def test_the_channel_feeds_a_streaming_mean_and_a_batch_rule_the_poisoned_round() -> None:
    updates = round_of(np.random.default_rng(6), IDS)
    colluders = Colluders(Ipm(IpmSettings(epsilon=2.0)), MALICIOUS, from_round=1, round=1)
    poisoned = colluders.poison(updates, REFERENCE)
    rows = np.stack([flat(u.delta) for u in poisoned])
    w = np.array([u.weight for u in updates])
    mean = Collusion(WeightedMean(), colluders)
    assert mean.name == "mean" and mean.linear
    np.testing.assert_allclose(
        flat(mean.aggregate(updates, REFERENCE).combined), w @ rows / w.sum(), rtol=1e-12
    )
    median = Collusion(CoordinateMedian(), colluders)
    assert median.name == "median" and not median.linear
    np.testing.assert_allclose(
        flat(median.aggregate(updates, REFERENCE).combined), np.median(rows, axis=0), rtol=1e-12
    )


# --- the client half and the record --------------------------------------------------


def test_the_client_half_poisons_only_malicious_clients_from_from_round(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path).slot("update_attack")
    plugin = OwnUpdatePlugin(FreeRide(FreeRideSettings(mode="stale")), frozenset({"m"}), 2, 4, 1.0)
    assert plugin.keeps_state
    rng = np.random.default_rng(7)
    broadcasts = [update_of(rng) for _ in range(3)]
    sent: dict[tuple[str, int], Params] = {}
    for rnd, broadcast in enumerate(broadcasts, start=1):
        for cid in ("h", "m"):
            ctx = ClientContext(cid, rnd, seed=rnd, store=store)
            plugin.start(ctx, broadcast)
            delta = update_of(rng)
            out = plugin.after_train(ctx, ClientUpdate(cid, delta, 10))
            sent[(cid, rnd)] = out.delta
            if cid == "h" or rnd < 2:
                assert out.delta is delta
    for rnd in (2, 3):
        for k in SHAPES:
            assert torch.equal(sent[("m", rnd)][k], broadcasts[rnd - 1][k] - broadcasts[rnd - 2][k])


def test_the_record_names_the_accepted_malicious_clients_from_from_round() -> None:
    colluders = Colluders(Ipm(), MALICIOUS, from_round=2)
    record_plugin = AttackRecord("ipm", MALICIOUS, 2, colluders)
    for rnd, attacked in ((1, []), (2, ["c1"])):
        record = RoundRecord(rnd, sampled=["c0", "c1", "c4"], accepted=["c0", "c1"])
        ctx = RoundContext(rnd, record.sampled, {}, 0, record)
        record_plugin.begin_round(ctx)
        assert colluders.round == rnd
        record_plugin.end_round(ctx)
        assert record.extra["attacked"] == attacked
    assert record_plugin.summary() == {"update": "ipm", "malicious": ["c1", "c4"], "from_round": 2}


# --- config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.update=ipm", "attack.ipm.eps=1"], "attack.ipm.eps: Extra inputs"),
        (["attack.update=alie", "attack.alie.z=-1"], "attack.alie.z: Input should be greater"),
        (["attack.update=noise", "attack.noise.mode=loud"], "attack.noise.mode"),
        (["attack.update=sign_flip", "attack.sign_flip.x=1"], "takes no settings section"),
        (["attack.update=sign_fli"], "choose 'none' or one of alie, free_ride, ipm"),
        (
            ["attack.update=alie", "secagg.enabled=true", "server.weighting=uniform"],
            "attack.update = 'alie' cannot be combined with secagg.enabled = true",
        ),
        (
            ["attack.update=min_max", "he.enabled=true", "server.weighting=uniform"],
            "attack.update = 'min_max' cannot be combined with he.enabled = true",
        ),
        (
            ["attack.update=ipm", "method.rank_min=2"],
            "attack.update = 'ipm' cannot be combined with heterogeneous LoRA ranks",
        ),
        (
            ["attack.update=alie", "server.keep_updates=true"],
            "attack.update = 'alie' cannot be combined with server.keep_updates = true",
        ),
        (["attack.update=scale", "runtime.engine=flower"], "needs runtime.engine = 'simulation'"),
        (["attack.update=noise", "federation.mode=local"], "federation.mode = 'local'"),
    ],
)
def test_bad_attack_configs_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_config(*overrides)


def test_the_colluders_channel_wraps_every_other_aggregator() -> None:
    """Composed last, it is the outermost aggregator: a round rule and screening see the
    crafted updates."""
    config = tiny_config(
        "attack.update=alie",
        "attack.fraction=0.5",
        "server.aggregator=foolsgold",
        "algorithm.screening.enabled=true",
    )
    names = [name for name, _ in active_algorithms(config)]
    assert names[-1] == "update_attack" and {"foolsgold", "screening"} <= set(names)


def test_an_own_update_attack_runs_under_secure_aggregation() -> None:
    config = tiny_config(
        "attack.update=sign_flip",
        "secagg.enabled=true",
        "server.weighting=uniform",
        "data.num_clients=4",
        "server.clients_per_round=4",
        "server.min_clients=3",
    )
    assert config.attack.update == "sign_flip"
