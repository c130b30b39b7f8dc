"""FLTrust, FoolsGold and FLAME against their papers' formulas (the authors' code for
FoolsGold's edge cases) computed here directly with numpy on random rounds; FoolsGold's
histories across rounds and through a checkpoint; FLAME's clustering on clearly
separated updates and its seeded noise; LoRA-update screening's spectral features
against the formed products, its flags on planted outliers, and its TP/FP counts;
update forensics read back; and the refusals at config load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from fedllm.aggregate.mean import WeightedMean
from fedllm.components import AGGREGATORS
from fedllm.config import ConfigError
from fedllm.pipeline.stage import WeightedUpdate
from fedllm.security.defenses.flame import Flame, FlameSettings, flame_combine
from fedllm.security.defenses.fltrust import FLTrust
from fedllm.security.defenses.foolsgold import FoolsGold, FoolsGoldSettings
from fedllm.security.forensics.keep import UpdateKeeper
from fedllm.security.screening.features import product_spectrum, update_features
from fedllm.security.screening.screen import UpdateScreen, confusion, robust_z
from fedllm.security.screening.settings import ScreeningSettings
from fedllm.server.plugin import RoundContext
from fedllm.types import ClientUpdate, Params, RoundRecord
from tests.support.runs import tiny_config
from tests.unit.test_robust_aggregators import (
    ROBUST,
    LoraRound,
    Round,
    close,
    flat,
    from_matrix,
    rounds,
)

NEW_RULES = ("fltrust", "foolsgold", "flame")


def test_every_registered_rule_is_tested_in_one_of_the_two_files() -> None:
    registered = {n for n in AGGREGATORS.names() if n != "mean" and not n.startswith("test_")}
    assert registered == set(ROBUST) | set(NEW_RULES)


# --- FLTrust (Cao et al. 2021) ---------------------------------------------------------


def paper_fltrust(x: np.ndarray, g0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TS_i = ReLU(cos(g_i, g_0)), g_i' = ||g_0|| / ||g_i|| g_i, sum TS_i g_i' / sum TS_i."""
    ts = np.array([max(0.0, float(g @ g0) / (np.linalg.norm(g) * np.linalg.norm(g0))) for g in x])
    rescaled = np.array([np.linalg.norm(g0) / np.linalg.norm(g) * g for g in x])
    return (ts[:, None] * rescaled).sum(axis=0) / ts.sum(), ts


def fltrust_with(root: np.ndarray, r: Round) -> FLTrust:
    """FLTrust whose root update is ``root`` (one row, split into ``r``'s tensors)."""

    def given_root(reference: Params, round_num: int) -> Params:
        out, start = {}, 0
        for name, ref in reference.items():
            out[name] = torch.tensor(root[start : start + ref.numel()]).reshape(ref.shape)
            start += ref.numel()
        return out

    return FLTrust(root=given_root)


@settings(max_examples=40, deadline=None)
@given(rounds(), st.integers(0, 2**32 - 1))
def test_fltrust_is_the_trust_weighted_mean_of_rescaled_updates(r: Round, seed: int) -> None:
    x = r.matrix
    g0 = x.mean(axis=0) + np.random.default_rng(seed).normal(size=x.shape[1]) * x.std()
    expected, ts = paper_fltrust(x, g0)
    result = fltrust_with(g0, r).aggregate(r.updates, r.reference)
    if ts.sum() == 0:  # the paper divides by zero: fedllm leaves the model where it was
        assert np.all(flat(result, r.reference) == 0)
    else:
        close(flat(result, r.reference), expected, scale=float(np.abs(x).max()))
    assert result.excluded == [f"c{i}" for i in range(len(ts)) if ts[i] == 0]


def test_fltrust_ignores_updates_against_the_root_and_bounds_the_rest() -> None:
    rng = np.random.default_rng(3)
    g0 = rng.normal(size=8)
    honest = g0 + rng.normal(size=(6, 8)) * 0.3
    attackers = np.vstack([-1e6 * g0, -3 * g0])  # against the root: trust 0
    r = from_matrix(np.vstack([honest, attackers]))
    aggregator = fltrust_with(g0, r)
    result = aggregator.aggregate(r.updates, r.reference)
    assert result.excluded == ["c6", "c7"]
    assert aggregator.details()["trust"]["c6"] == 0.0
    assert np.linalg.norm(flat(result, r.reference)) <= np.linalg.norm(g0) + 1e-9
    everyone_against = from_matrix(-np.abs(honest) * np.sign(g0))
    result = fltrust_with(g0, everyone_against).aggregate(everyone_against.updates, r.reference)
    assert np.all(flat(result, r.reference) == 0) and len(result.excluded) == 6


def test_fltrust_on_lora_scores_and_rescales_both_factors_as_one_vector() -> None:
    """LoRA's dA and dB: one flattened vector per client (the factors, not B A)."""
    from tests.unit.test_robust_aggregators import lora_round

    lr = lora_round(np.random.default_rng(5), 6)
    names = list(lr.base)
    x = np.stack([np.concatenate([d[k].reshape(-1) for k in names]) for d in lr.deltas])
    g0 = x[0] + 0.1
    expected, _ = paper_fltrust(x, g0)
    result = fltrust_with(g0, Round([[d[k] for k in names] for d in lr.deltas], [1.0] * 6))
    got = result.aggregate(lr.updates, lr.reference)
    close(flat(got, lr.reference), expected)


def test_fltrust_without_a_root_is_refused() -> None:
    r = from_matrix(np.ones((3, 2)))
    with pytest.raises(ValueError, match="root update"):
        FLTrust().aggregate(r.updates, r.reference)


# --- FoolsGold (Fung et al. 2020) ------------------------------------------------------


def authors_foolsgold(histories: np.ndarray, kappa: float) -> np.ndarray:
    """The authors' foolsgold.py, with kappa (their code: 1) and sklearn's cosine."""
    n = histories.shape[0]
    lengths = np.linalg.norm(histories, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = histories @ histories.T / np.outer(lengths, lengths)
    cs = np.nan_to_num(cs) - np.eye(n)
    np.fill_diagonal(cs, 0.0)  # cos(H_i, H_i) - 1, exactly (rounding would leave -2e-16)
    maxcs = np.max(cs, axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and maxcs[i] < maxcs[j]:
                cs[i][j] = cs[i][j] * maxcs[i] / maxcs[j]
    wv = 1 - np.max(cs, axis=1)
    wv = np.clip(wv, 0, 1)
    if np.max(wv) == 0:
        return np.zeros(n)
    wv = wv / np.max(wv)
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = kappa * (np.log(wv / (1 - wv)) + 0.5)
    wv[np.isinf(wv) & (wv > 0)] = 1
    return np.clip(np.nan_to_num(wv, neginf=0.0), 0, 1)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 7),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.5, 1.0, 2.0]),
)
def test_foolsgold_weights_histories_as_algorithm_1(
    n: int, rounds_: int, seed: int, kappa: float
) -> None:
    """Several rounds of random cohorts, two of them sybils sending one direction."""
    rng = np.random.default_rng(seed)
    rule = FoolsGold(FoolsGoldSettings(kappa=kappa))
    history: dict[str, np.ndarray] = {}
    for _ in range(rounds_):
        cohort = sorted(rng.choice(n + 2, size=rng.integers(2, n + 3), replace=False))
        rows = {f"c{i}": rng.normal(size=6) for i in cohort}
        for sybil in ("c0", "c1"):
            if sybil in rows:
                rows[sybil] = np.array([1.0, 2, 0, 0, 1, 0]) + rng.normal(size=6) * 1e-3
        for cid, row in rows.items():
            history[cid] = history.get(cid, 0) + row
        ids = list(rows)
        r = Round([[rows[c]] for c in ids], [1.0] * len(ids))
        updates = [
            WeightedUpdate(cid, u.delta, u.weight) for cid, u in zip(ids, r.updates, strict=True)
        ]
        alpha = authors_foolsgold(np.stack([history[c] for c in ids]), kappa)
        result = rule.aggregate(updates, r.reference)
        expected = (alpha[:, None] * np.stack([rows[c] for c in ids])).sum(axis=0) / len(ids)
        close(flat(result, r.reference), expected, scale=10.0)
        assert list(rule.details()["weights"].values()) == pytest.approx(alpha, abs=1e-9)
        assert result.excluded == [c for c, a in zip(ids, alpha, strict=True) if a <= 0]


def test_foolsgold_gives_sybils_nothing_and_honest_clients_full_weight() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(5, 10))
    sybils = np.tile(rng.normal(size=10), (3, 1))
    r = from_matrix(np.vstack([honest, sybils]))
    rule = FoolsGold()
    result = rule.aggregate(r.updates, r.reference)
    weights = rule.details()["weights"]
    assert [weights[f"c{i}"] for i in (5, 6, 7)] == [0.0, 0.0, 0.0]
    assert result.excluded == ["c5", "c6", "c7"]
    assert all(weights[f"c{i}"] > 0 for i in range(5))


def test_foolsgold_resumes_from_its_state_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    rounds_ = [from_matrix(rng.normal(size=(5, 7)).astype(np.float32)) for _ in range(3)]
    whole = FoolsGold()
    outputs = [whole.aggregate(r.updates, r.reference).combined for r in rounds_]
    cut = FoolsGold()
    for r in rounds_[:2]:
        cut.aggregate(r.updates, r.reference)
    tensors, meta = cut.state()
    resumed = FoolsGold()
    resumed.restore({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    again = resumed.aggregate(rounds_[2].updates, rounds_[2].reference).combined
    assert all(torch.equal(again[k], outputs[2][k]) for k in again)
    assert set(tensors) == {f"c{i}" for i in range(5)}


# --- FLAME (Nguyen et al. 2022) --------------------------------------------------------


def paper_flame(x: np.ndarray, admitted: list[int]) -> tuple[np.ndarray, float]:
    """Clip to S_t = median ||Delta_i|| (all n), average the admitted (noise: none)."""
    e = np.linalg.norm(x, axis=1)
    s = float(np.median(e))
    clipped = [x[i] * min(1.0, s / e[i]) for i in admitted]
    return np.mean(clipped, axis=0), s


@settings(max_examples=40, deadline=None)
@given(rounds(fewest=2), st.data())
def test_flame_clips_to_the_median_norm_and_averages_the_admitted(r: Round, data: Any) -> None:
    x = r.matrix
    n = x.shape[0]
    admitted = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    expected, s = paper_flame(x, admitted)
    rows = torch.tensor(x)
    combined, clip = flame_combine(rows, admitted, 0.0, torch.Generator().manual_seed(0))
    close(combined.numpy(), expected, scale=float(np.abs(x).max()))
    assert clip == pytest.approx(s, rel=1e-12)


def test_flame_noise_is_lambda_times_the_clip_from_the_seeded_generator() -> None:
    x = np.random.default_rng(2).normal(size=(5, 50))
    rows = torch.tensor(x)
    plain, s = flame_combine(rows, [0, 1, 2], 0.0, torch.Generator().manual_seed(9))
    noisy, _ = flame_combine(rows, [0, 1, 2], 0.01, torch.Generator().manual_seed(9))
    draw = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    close((noisy - plain).numpy(), 0.01 * s * draw.numpy())


def separated_round(rng: np.random.Generator) -> Round:
    """7 honest updates around one direction, 3 attackers along another."""
    honest = np.array([1.0, 1, 0, 0, 0, 0]) + rng.normal(size=(7, 6)) * 0.01
    attackers = np.array([0.0, 0, 0, 5, 5, 0]) + rng.normal(size=(3, 6)) * 0.01
    return from_matrix(np.vstack([honest, attackers]))


def test_flame_keeps_the_majority_cluster_of_clearly_separated_updates() -> None:
    """HDBSCAN admits more than half (it may call an honest update at the cluster's edge
    noise, as in the paper's own false positives), never an attacker."""
    r = separated_round(np.random.default_rng(4))
    rule = Flame(FlameSettings(noise=0.0, measure="update"))
    result = rule.aggregate(r.updates, r.reference)
    admitted = [int(c[1:]) for c in rule.details()["admitted"]]
    assert {"c7", "c8", "c9"} <= set(result.excluded)
    assert len(admitted) >= 10 // 2 + 1 and max(admitted) < 7
    assert sorted(result.excluded) == sorted(f"c{i}" for i in range(10) if i not in admitted)
    expected, s = paper_flame(r.matrix, admitted)
    close(flat(result, r.reference), expected)
    assert rule.details()["clip"] == pytest.approx(s)


@pytest.mark.parametrize("measure", ["model", "update"])
def test_flame_clusters_cosine_distances_of_models_or_updates(
    measure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distances HDBSCAN gets (the clustering mocked: it admits the first four):
    1 - cos between W_i = G + Delta_i ('model', the paper's) or between Delta_i."""
    from fedllm.security.defenses import flame

    seen: list[np.ndarray] = []

    def admit_four(distances: torch.Tensor) -> list[int]:
        seen.append(distances.numpy().copy())
        return [0, 1, 2, 3]

    monkeypatch.setattr(flame, "flame_admitted", admit_four)
    r = separated_round(np.random.default_rng(6))
    base = np.random.default_rng(7).normal(size=6)
    reference = {"t0": torch.tensor(base)}
    rule = Flame(FlameSettings(noise=0.0, measure=measure))  # type: ignore[arg-type]
    result = rule.aggregate(r.updates, reference)
    points = r.matrix + (base if measure == "model" else 0.0)
    unit = points / np.linalg.norm(points, axis=1)[:, None]
    np.testing.assert_allclose(seen[0], 1 - unit @ unit.T, atol=1e-12)
    assert result.excluded == [f"c{i}" for i in range(4, 10)]
    close(flat(result, reference), paper_flame(r.matrix, [0, 1, 2, 3])[0])


def test_flame_noise_comes_from_the_rounds_seed() -> None:
    r = separated_round(np.random.default_rng(8))
    results = []
    for round_seed in (11, 11, 12):
        rule = Flame(FlameSettings(noise=0.1, measure="update"))
        rule.begin(3, round_seed)
        results.append(rule.aggregate(r.updates, r.reference).combined["t0"])
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])
    secure = [Flame(FlameSettings(noise=0.1, measure="update"), secure=True) for _ in range(2)]
    for rule in secure:  # run.randomness = 'secure': the OS CSPRNG, whatever the round's seed
        rule.begin(3, 11)
    a, b = (rule.aggregate(r.updates, r.reference).combined["t0"] for rule in secure)
    assert not torch.equal(a, b)


# --- LoRA: the factors as one vector --------------------------------------------------


@pytest.mark.parametrize("name", NEW_RULES)
def test_each_rule_sees_a_lora_update_as_its_factors_concatenated(name: str) -> None:
    """dA and dB of every layer (and any other tensor) are coordinates of one vector: the
    rule on the LoRA update is the rule on that vector (not on B A)."""
    from tests.unit.test_robust_aggregators import lora_round

    lr = lora_round(np.random.default_rng(15), 7, factor_of=2)
    names = list(lr.base)
    x = np.stack([np.concatenate([d[k].reshape(-1) for k in names]) for d in lr.deltas])
    as_one = from_matrix(x)
    rules = []
    for _ in range(2):
        if name == "fltrust":
            rules.append(fltrust_with(x.mean(axis=0) + 0.05, Round([[row] for row in x], [1.0])))
        elif name == "foolsgold":
            rules.append(FoolsGold())
        else:
            rules.append(Flame(FlameSettings(noise=0.01, measure="update")))
        rules[-1].begin(1, 5)
    factors = rules[0].aggregate(lr.updates, lr.reference)
    flat_one = rules[1].aggregate(as_one.updates, as_one.reference)
    np.testing.assert_allclose(
        flat(factors, lr.reference), flat(flat_one, as_one.reference), rtol=1e-12, atol=1e-15
    )
    assert factors.excluded == flat_one.excluded


# --- LoRA-update screening -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_product_spectrum_is_that_of_the_formed_product_change(
    r: int, out: int, inp: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(r, inp)), rng.normal(size=(out, r))
    da, db = rng.normal(size=(r, inp)), rng.normal(size=(out, r))
    formed = (b + db) @ (a + da) - b @ a
    expected = np.linalg.svd(formed, compute_uv=False)
    got = product_spectrum(*(torch.tensor(t) for t in (a, b, da, db))).numpy()
    k = min(len(expected), len(got))
    np.testing.assert_allclose(got[:k], expected[:k], atol=1e-10 * (1 + expected[0]))
    assert np.all(np.abs(got[k:]) < 1e-10 * (1 + expected[0]))


def formed_features(lr: LoraRound, i: int) -> dict[str, float]:
    layers = sorted({k.split(".lora_")[0] for k in lr.base if ".lora_" in k})
    changes = [
        lr.product(i, layer)
        - (lr.base[f"{layer}.lora_B.default.weight"] @ lr.base[f"{layer}.lora_A.default.weight"])
        for layer in layers
    ]
    spectra = [np.linalg.svd(c, compute_uv=False) for c in changes]
    energy = sum(float((s**2).sum()) for s in spectra)
    other = float((lr.deltas[i]["l1.bias"] ** 2).sum())
    return {
        "norm": float(np.sqrt(energy + other)),
        "top": max(float(s[0]) for s in spectra),
        "concentration": sum(float(s[0] ** 2) for s in spectra) / energy,
    }


def test_update_features_are_those_of_the_formed_products() -> None:
    from tests.unit.test_robust_aggregators import lora_round

    lr = lora_round(np.random.default_rng(8), 4)
    for i, update in enumerate(lr.updates):
        got = update_features(update.delta, lr.reference)
        assert got == pytest.approx(formed_features(lr, i), rel=1e-9)
    full = {"w": torch.ones(3, 2)}
    assert update_features({"w": torch.full((3, 2), 2.0)}, full) == {
        "norm": pytest.approx(np.sqrt(24))
    }


def test_robust_z_is_the_modified_z_score() -> None:
    x = np.array([1.0, 2.0, 2.5, 3.0, 40.0])
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    assert robust_z(list(x)) == pytest.approx(list(0.6745 * (x - med) / mad), rel=1e-3)
    assert robust_z([5.0, 5.0, 5.0, 6.0])[:3] == [0.0, 0.0, 0.0]
    assert robust_z([5.0, 5.0, 5.0, 6.0])[3] > 1e6


def planted_round(rng: np.random.Generator, kind: str) -> tuple[Params, list[WeightedUpdate]]:
    """10 clients' LoRA updates of two layers (r = 4): each clean one changes each
    layer's product by rank one (dB = u w^T, dA = 0) of varying size; client c9's is
    planted: 30 times larger ('norm'), or spread over every direction ('rank', its
    factors' changes drawn at random, its norm like the others')."""
    shapes = {"l0": (16, 12), "l1": (10, 8)}
    reference: Params = {}
    for layer, (out, inp) in shapes.items():
        reference[f"{layer}.lora_A.default.weight"] = torch.tensor(rng.normal(size=(4, inp)))
        reference[f"{layer}.lora_B.default.weight"] = torch.tensor(rng.normal(size=(out, 4)))
    updates = []
    for i in range(10):
        delta: Params = {}
        for layer, (out, inp) in shapes.items():
            db = 0.01 * rng.uniform(0.8, 1.2) * np.outer(rng.normal(size=out), rng.normal(size=4))
            da = np.zeros((4, inp))
            if i == 9 and kind == "norm":
                db = 30 * db
            if i == 9 and kind == "rank":
                da = 0.003 * rng.normal(size=(4, inp))
                db = 0.003 * rng.normal(size=(out, 4))
            delta[f"{layer}.lora_A.default.weight"] = torch.tensor(da)
            delta[f"{layer}.lora_B.default.weight"] = torch.tensor(db)
        updates.append(WeightedUpdate(f"c{i}", delta, 1.0))
    return reference, updates


@pytest.mark.parametrize("kind", ["norm", "rank"])
def test_screening_flags_the_planted_outlier_and_no_clean_update(kind: str) -> None:
    reference, updates = planted_round(np.random.default_rng(12), kind)
    screen = UpdateScreen(ScreeningSettings(enabled=True, action="exclude"), {"c9"})
    screen.wrap(WeightedMean())
    screen.begin(1, 0)
    result = screen.aggregate(updates, reference)
    details = screen.details()
    assert details["flagged"] == ["c9"] and result.excluded == ["c9"]
    assert {k: details[k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 1, "fp": 0, "fn": 0, "tn": 9}
    expected = {
        k: sum(u.delta[k] for u in updates[:9]) / 9 for k in reference
    }  # the mean of the nine kept
    for k in reference:
        torch.testing.assert_close(result.combined[k].double(), expected[k], rtol=1e-6, atol=1e-9)
    assert screen.summary() == {
        "flagged": 1,
        "action": "exclude",
        "tp": 1,
        "fp": 0,
        "fn": 0,
        "tn": 9,
        "tpr": 1.0,
        "fpr": 0.0,
    }


def test_flag_only_keeps_every_update_and_counts_before_the_attack_starts_as_clean() -> None:
    reference, updates = planted_round(np.random.default_rng(13), "norm")
    screen = UpdateScreen(ScreeningSettings(enabled=True), {"c9"}, attacked_from=2)
    screen.wrap(WeightedMean())
    screen.begin(1, 0)
    result = screen.aggregate(updates, reference)
    assert result.excluded == [] and screen.details()["flagged"] == ["c9"]
    assert screen.details()["fp"] == 1  # round 1: c9 does not attack yet
    assert confusion(["a", "b", "c"], ["a"], ["a", "b"]) == {"tp": 1, "fp": 0, "fn": 1, "tn": 1}


# --- update forensics ------------------------------------------------------------------


def test_kept_updates_read_back_equal_the_updates_and_the_aggregate(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    keeper = UpdateKeeper(tmp_path / "updates", malicious={"b"})
    ctx = RoundContext(3, ["a", "b"], {}, 0, RoundRecord(round=3))
    keeper.begin_round(ctx)
    sent = {cid: {"x.weight": torch.tensor(rng.normal(size=(2, 3)))} for cid in ("a", "b")}
    for cid, weight in (("a", 2.0), ("b", 5.0)):
        keeper.accept(ctx, ClientUpdate(cid, sent[cid], 4), weight)
    aggregate = {"x.weight": torch.tensor(rng.normal(size=(2, 3)))}
    ctx.record.extra.update({"excluded": ["b"], "screening": {"flagged": ["b"]}})
    assert keeper.process(ctx, aggregate) is aggregate
    keeper.end_round(ctx)
    back = load_file(tmp_path / "updates" / "round_3.safetensors")
    assert set(back) == {"update/a/x.weight", "update/b/x.weight", "aggregate/x.weight"}
    assert torch.equal(back["update/a/x.weight"], sent["a"]["x.weight"])
    assert torch.equal(back["update/b/x.weight"], sent["b"]["x.weight"])
    assert torch.equal(back["aggregate/x.weight"], aggregate["x.weight"])
    sidecar = json.loads((tmp_path / "updates" / "round_3.json").read_text())
    assert sidecar == {
        "round": 3,
        "clients": ["a", "b"],
        "weights": [2.0, 5.0],
        "excluded": ["b"],
        "flagged": ["b"],
        "malicious": {"a": False, "b": True},
    }


# --- refusals at load ------------------------------------------------------------------

ENOUGH = ["data.num_clients=5", "server.clients_per_round=5", "server.min_clients=5"]


def test_fltrust_without_a_public_corpus_is_refused_naming_public_source() -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config("server.aggregator='fltrust'")
    assert "server.aggregator = 'fltrust' needs the server's root dataset" in str(caught.value)
    assert "public.source" in str(caught.value)
    tiny_config("server.aggregator='fltrust'", "public.source='chitchat'")  # loads


def test_fltrust_refuses_the_public_server_as_a_participant() -> None:
    with pytest.raises(ConfigError, match="public.server_steps adds the server's update"):
        tiny_config(
            "server.aggregator='fltrust'", "public.source='chitchat'", "public.server_steps=2"
        )


@pytest.mark.parametrize("protocol", ["secagg.enabled=true", "he.enabled=true"])
@pytest.mark.parametrize("rule", NEW_RULES)
def test_the_new_rules_are_refused_with_the_sum_only_protocols(protocol: str, rule: str) -> None:
    extra = ["public.source='chitchat'"] if rule == "fltrust" else []
    with pytest.raises(ConfigError) as caught:
        tiny_config(
            protocol, f"server.aggregator='{rule}'", "server.weighting='uniform'", *ENOUGH, *extra
        )
    assert f"reveals only the sum, but server.aggregator = '{rule}'" in str(caught.value)


@pytest.mark.parametrize("protocol", ["secagg.enabled=true", "he.enabled=true"])
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("server.keep_updates=true", "server.keep_updates = true cannot be combined with"),
        ("algorithm.screening.enabled=true", "algorithm.screening.enabled = true cannot be"),
    ],
)
def test_forensics_and_screening_are_refused_with_secagg_and_he(
    protocol: str, setting: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(protocol, setting, "server.weighting='uniform'", *ENOUGH)
    assert message in str(caught.value)
    assert "only their sum" in str(caught.value) or "only the sum" in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("aggregator.foolsgold.kappa=0", "aggregator.foolsgold.kappa"),
        ("aggregator.flame.measure='weights'", "aggregator.flame.measure"),
        ("aggregator.fltrust.root_steps=0", "aggregator.fltrust.root_steps"),
        ("algorithm.screening.action='drop'", "algorithm.screening.action"),
        ("algorithm.screening.threshold=-1", "algorithm.screening.threshold"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(setting)
    assert message in str(caught.value)


def test_central_dp_refuses_the_new_rules() -> None:
    with pytest.raises(ConfigError, match="but server.aggregator = 'flame' combines them"):
        tiny_config(
            "privacy.dp='central'",
            "privacy.clip_norm=0.1",
            "privacy.noise_multiplier=1.0",
            "server.aggregator='flame'",
            "server.weighting='uniform'",
        )
