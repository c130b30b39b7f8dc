"""The SecAgg+ building blocks against direct computations: fixed point in the ring,
Shamir sharing, the neighbour graph, key agreement and sealing, the PRG, packing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm.pipeline.stage import Constant
from fedllm.privacy.central_dp.noise import DistributedNoiseStage
from fedllm.secure.errors import AuthenticationError, SecAggViolation
from fedllm.secure.keys import agree, context_label, generate_key_pair, open_sealed, seal
from fedllm.secure.messages import pack_map, unpack_map
from fedllm.secure.randomness import SeededRandomness, SystemRandomness
from fedllm.secure.secagg import shamir
from fedllm.secure.secagg.graph import default_degree, neighbours
from fedllm.secure.secagg.params import (
    RoundParams,
    check_threshold,
    collusion_statement,
    default_threshold,
    min_sum_inputs,
    noise_shares,
)
from fedllm.secure.secagg.prg import expand
from fedllm.secure.secagg.ring import RingSpec, dequantise_sum, min_bits, quantise


@settings(max_examples=40, deadline=None)
@given(
    clients=st.integers(1, 200),
    extra_bits=st.integers(0, 20),
    clip=st.floats(0.01, 100.0),
    size=st.integers(1, 64),
    seed=st.integers(0, 2**31),
)
def test_the_ring_sum_of_any_cohort_never_wraps_and_dequantises_within_steps(
    clients: int, extra_bits: int, clip: float, size: int, seed: int
) -> None:
    spec = RingSpec(min(62, min_bits(clients) + extra_bits), clip, clients)
    rng = np.random.default_rng(seed)
    values = rng.uniform(-clip, clip, (clients, size))
    q = np.stack([quantise(v, spec, rng) for v in values])
    assert q.min() >= 0 and q.max() <= spec.levels - 1
    exact = q.astype(object).sum(axis=0)
    assert max(exact) < spec.modulus  # the sum mod 2^bits is the sum itself
    total = np.asarray(exact, dtype=np.int64) & spec.mask
    recovered = dequantise_sum(total, clients, spec)
    assert np.all(np.abs(recovered - values.sum(axis=0)) <= clients * spec.step + 1e-9 * clip)


def test_stochastic_rounding_is_unbiased() -> None:
    spec = RingSpec(12, 1.0, 4)
    x = np.full(200_000, 0.123456)
    q = quantise(x, spec, np.random.default_rng(0))
    estimate = q.mean() * spec.step - spec.clip_range
    assert abs(estimate - 0.123456) < 4 * spec.step / np.sqrt(len(x))


def test_a_ring_too_small_for_the_cohort_is_refused_with_the_bits_needed() -> None:
    with pytest.raises(ValueError, match=f"use bits >= {min_bits(1000)}"):
        RingSpec(10, 1.0, 1000)
    with pytest.raises(ValueError, match="NaN"):
        quantise(np.array([np.nan]), RingSpec(16, 1.0, 2), np.random.default_rng(0))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), data=st.data())
def test_any_t_shares_reconstruct_and_fewer_do_not(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    rng = SeededRandomness(data.draw(st.integers(0, 1000)))
    ids = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, ids, rng)
    subset = data.draw(st.lists(st.sampled_from(ids), min_size=t, max_size=n, unique=True))
    assert shamir.combine({i: shares[i] for i in subset}, t) == secret
    if t > 1:
        fewer = {i: shares[i] for i in subset[: t - 1]}
        # t - 1 points fit a polynomial of degree t - 2: its constant is not the secret
        points = {i: shamir.share_value(s) for i, s in fewer.items()}
        assert shamir.interpolate(points, 0) != int.from_bytes(secret, "big")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), data=st.data())
def test_reconstruction_checks_every_share_and_refuses_a_forged_one(
    n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    ids = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, ids, SeededRandomness(data.draw(st.integers(0, 99))))
    assert shamir.reconstruct(shares, t) == secret
    forged = data.draw(st.sampled_from(ids))
    honest = shamir.share_value(shares[forged])
    value = data.draw(st.integers(0, shamir.PRIME - 1).filter(lambda v: v != honest))
    bad = {**shares, forged: value.to_bytes(shamir.SHARE_BYTES, "big")}
    # off the others' polynomial (n > t), or a constant term beyond 32 bytes (n = t:
    # all but certain for a share not crafted to shift the secret, a miss 2^-265)
    with pytest.raises(ValueError, match="polynomial|32-byte"):
        shamir.reconstruct(bad, t)
    with pytest.raises(ValueError, match="not a field element"):
        shamir.reconstruct({**shares, forged: b"\xff" * shamir.SHARE_BYTES}, t)


def test_the_neighbour_graph_is_symmetric_regular_and_seeded() -> None:
    ids = [f"c{i}" for i in range(50)]
    k = default_degree(50)
    assert k == 12
    graph = neighbours(ids, k, 3)
    assert all(len(v) == k and c not in v for c, v in graph.items())
    assert all(c in graph[v] for c, near in graph.items() for v in near)
    assert graph == neighbours(list(reversed(ids)), k, 3)
    assert graph != neighbours(ids, k, 4)
    with pytest.raises(ValueError, match="even degree"):
        neighbours(ids, 5, 0)


def test_thresholds_outside_half_to_degree_are_refused() -> None:
    assert [default_threshold(k) for k in (2, 8, 12)] == [2, 6, 9]
    check_threshold(8, 5)
    with pytest.raises(ValueError, match="5 <= threshold <= 8"):
        check_threshold(8, 4)
    params = RoundParams(RingSpec(20, 0.5, 10), 6, 7)
    assert RoundParams.from_config(params.to_config()) == params


def test_agreement_is_symmetric_and_sealing_binds_sender_recipient_round() -> None:
    rng = SeededRandomness(1)
    a, b = generate_key_pair(rng), generate_key_pair(rng)
    label = context_label("encrypt", 2, "a", "b")
    key = agree(a.private, b.public, label)
    assert key == agree(b.private, a.public, context_label("encrypt", 2, "b", "a"))
    assert key != agree(a.private, b.public, context_label("encrypt", 3, "a", "b"))
    sealed = seal(key, b"share", sender="a", recipient="b", round_id=2, rng=rng)
    assert open_sealed(key, sealed, sender="a", recipient="b", round_id=2) == b"share"
    for sender, recipient, round_id in [("b", "a", 2), ("a", "c", 2), ("a", "b", 3)]:
        with pytest.raises(AuthenticationError):
            open_sealed(key, sealed, sender=sender, recipient=recipient, round_id=round_id)
    assert not SystemRandomness().deterministic
    assert (
        generate_key_pair(SystemRandomness()).public != generate_key_pair(SystemRandomness()).public
    )


def test_the_prg_is_deterministic_in_range_and_uniform_in_its_bits() -> None:
    seed = bytes(range(32))
    words = expand(seed, 100_000, 20)
    assert np.array_equal(words, expand(seed, 100_000, 20))
    assert words.min() >= 0 and words.max() < 1 << 20
    bits = (words[:, None] >> np.arange(20)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.01)  # 6 sigma of 100k fair bits
    assert np.array_equal(expand(seed, 10, 20), words[:10])  # a prefix of the stream
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4, 20)


@given(st.dictionaries(st.text(max_size=8), st.binary(max_size=80), max_size=6))
def test_maps_round_trip_and_truncation_is_refused(entries: dict[str, bytes]) -> None:
    packed = pack_map(entries)
    assert unpack_map(packed) == entries
    for cut in itertools.islice(range(1, len(packed)), 0, None, 7):
        try:
            unpack_map(packed[:cut])
        except SecAggViolation:
            continue
        # a cut on an entry boundary is a shorter valid map
        assert len(unpack_map(packed[:cut])) < len(entries)


@pytest.mark.parametrize("min_clients", [1, 2, 3, 5, 8, 20])
def test_distributed_noise_survives_the_tolerated_coalition_and_not_one_more(
    min_clients: int,
) -> None:
    """Each of n survivors adds N(0, (zC)^2 / m) (the stage's own client std); c colluders
    subtract theirs. The variance left, (n - c) std^2, is computed here directly: at
    least (zC)^2 for every c up to the tolerated count whenever n >= the fewest inputs a
    round reveals, and below it at n = that fewest with one colluder more."""
    z, clip = 0.7, 3.0
    fewest = min_sum_inputs(min_clients)
    for tolerated in range(fewest):
        m = noise_shares(min_clients, tolerated)
        stage = DistributedNoiseStage(z, Constant(clip), m)
        variance = stage.client_std(stage.initial_state()) ** 2
        for n in range(fewest, fewest + 4):
            for c in range(tolerated + 1):
                assert (n - c) * variance >= (z * clip) ** 2 * (1 - 1e-12), (n, c)
        left = (fewest - (tolerated + 1)) * variance
        assert left < (z * clip) ** 2 * (1 - 1e-3)
    with pytest.raises(ValueError, match=f"at most {fewest - 1}"):
        noise_shares(min_clients, fewest)
    assert noise_shares(min_clients, 0) == max(2, min_clients)  # the old m, unchanged
    assert f"up to {fewest - 1} client(s)" in collusion_statement(min_clients, fewest - 1)
    assert "against the server alone" in collusion_statement(min_clients, 0)
