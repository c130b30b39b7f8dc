"""SecAgg+ rounds among in-process clients: the exact sum under dropouts at every phase,
a clean abort beyond what the threshold tolerates, uniform masked inputs, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedllm.secure.client_round import SecAggClient
from fedllm.secure.errors import AuthenticationError, SecAggAbort, SecAggViolation
from fedllm.secure.graph import default_degree, neighbours
from fedllm.secure.params import RoundParams, default_threshold, tolerated_dropouts
from fedllm.secure.randomness import SeededRandomness
from fedllm.secure.ring import RingSpec
from fedllm.secure.simulate import PHASES, simulate_round


def _inputs(n: int, size: int, spec: RingSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"client_{i:02d}": rng.integers(0, spec.levels, size, dtype=np.int64) for i in range(n)}


def _round(n: int, bits: int = 32) -> tuple[RoundParams, int]:
    degree = default_degree(n)
    return RoundParams(RingSpec(bits, 1.0, n), default_threshold(degree), 3), degree


def _plain_sum(inputs: dict[str, np.ndarray], who: list[str]) -> np.ndarray:
    return np.sum([inputs[c].astype(object) for c in who], axis=0).astype(np.int64)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("count", ["none", "one", "tolerated"])
def test_sum_is_exact_with_dropouts_at_each_phase(phase: str, count: str) -> None:
    n = 16
    params, degree = _round(n)
    inputs = _inputs(n, 257, params.spec)
    most = tolerated_dropouts(n, degree, params.threshold)
    assert most >= 2
    k = {"none": 0, "one": 1, "tolerated": most}[count]
    # the worst pattern: every dropout a neighbour of the same client
    graph = neighbours(sorted(inputs), degree, 11)
    gone = set(graph["client_00"][:k])
    outcome = simulate_round(inputs, params, degree, 11, {phase: gone})
    assert outcome.abort is None
    expected_in = sorted(set(inputs) - gone) if phase != "unmask" else sorted(inputs)
    assert outcome.survivors == expected_in  # dropping at unmask keeps the masked input
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, expected_in))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(5, 14),
    size=st.integers(1, 40),
    bits=st.integers(16, 62),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_any_tolerated_dropout_pattern_gives_the_exact_sum(
    n: int, size: int, bits: int, seed: int, data: st.DataObject
) -> None:
    params, degree = _round(n, bits)
    inputs = _inputs(n, size, params.spec, seed)
    ids = sorted(inputs)
    most = tolerated_dropouts(n, degree, params.threshold)
    gone = data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=most))
    plan: dict[str, set[str]] = {p: set() for p in PHASES}
    for cid in gone:
        plan[data.draw(st.sampled_from(PHASES))].add(cid)
    outcome = simulate_round(inputs, params, degree, seed, plan)
    assert outcome.abort is None
    lost_input = plan["advertise"] | plan["share"] | plan["masked"]
    assert outcome.survivors == [c for c in ids if c not in lost_input]
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, outcome.survivors))


@pytest.mark.parametrize("phase", PHASES)
def test_one_dropout_too_many_aborts_naming_the_client(phase: str) -> None:
    n = 16
    params, degree = _round(n)
    inputs = _inputs(n, 8, params.spec)
    graph = neighbours(sorted(inputs), degree, 5)
    gone = set(graph["client_00"][: degree - params.threshold + 1])
    outcome = simulate_round(inputs, params, degree, 5, {phase: gone})
    assert outcome.total is None
    assert outcome.abort is not None
    assert "client_00" in outcome.abort and f"threshold {params.threshold}" in outcome.abort


def test_too_few_masked_inputs_abort_rather_than_reveal_one() -> None:
    params, degree = RoundParams(RingSpec(24, 1.0, 3), 2, 1), 2
    inputs = _inputs(3, 4, params.spec)
    outcome = simulate_round(inputs, params, degree, 0, {"masked": {"client_01", "client_02"}})
    assert outcome.total is None and outcome.abort is not None
    assert "fewer than the 2" in outcome.abort


def test_a_masked_input_is_uniform_in_the_ring() -> None:
    """An all-zero input, masked, is indistinguishable from uniform bytes (chi-square
    over the 256 values of an 8-bit ring)."""
    n, size = 8, 40_000
    params = RoundParams(RingSpec(8, 1.0, 2), 5, 1)
    degree = 6
    clients = {
        c: SecAggClient(c, params, [f"c{i}" for i in range(n)], SeededRandomness(1, c))
        for c in [f"c{i}" for i in range(n)]
    }
    keys = {c: client.advertise() for c, client in clients.items()}
    graph = neighbours(sorted(clients), degree, 2)
    sealed = {
        u: clients[u].share_keys({v: keys[v][0] + keys[v][1] for v in graph[u]}) for u in clients
    }
    target = "c0"
    clients[target].receive_shares({u: sealed[u][target] for u in graph[target]})
    masked = clients[target].mask(np.zeros(size, dtype=np.int64))
    counts = np.bincount(masked, minlength=256)
    statistic = float(((counts - size / 256) ** 2 / (size / 256)).sum())
    assert stats.chi2.sf(statistic, 255) > 1e-4
    unmasked_counts = np.bincount(np.zeros(size, dtype=np.int64), minlength=256)
    wrong = float(((unmasked_counts - size / 256) ** 2 / (size / 256)).sum())
    assert stats.chi2.sf(wrong, 255) < 1e-6  # the test can tell a non-uniform vector


def _two_clients() -> tuple[SecAggClient, SecAggClient, dict[str, bytes]]:
    params = RoundParams(RingSpec(16, 1.0, 3), 2, 4)
    cohort = ["a", "b", "c"]
    a, b, c = (SecAggClient(x, params, cohort, SeededRandomness(0, x)) for x in cohort)
    keys = {x.client_id: b"".join(x.advertise()) for x in (a, b, c)}
    sealed_by_a = a.share_keys({"b": keys["b"], "c": keys["c"]})
    b.share_keys({"a": keys["a"], "c": keys["c"]})
    return a, b, sealed_by_a


def test_a_client_never_reveals_both_secrets_of_one_neighbour() -> None:
    _, b, sealed_by_a = _two_clients()
    b.receive_shares({"a": sealed_by_a["b"]})
    b.mask(np.zeros(3, dtype=np.int64))
    with pytest.raises(SecAggViolation, match="both survivors and dropped"):
        b.unmask(["a", "c"], ["a"])


def test_a_redirected_or_tampered_share_message_fails_to_open() -> None:
    _, b, sealed_by_a = _two_clients()
    with pytest.raises(AuthenticationError):
        b.receive_shares({"a": sealed_by_a["c"]})  # addressed to c
    tampered = bytearray(sealed_by_a["b"])
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationError):
        b.receive_shares({"a": bytes(tampered)})


def test_phases_out_of_order_and_too_few_neighbours_are_refused() -> None:
    params = RoundParams(RingSpec(16, 1.0, 3), 2, 1)
    client = SecAggClient("a", params, ["a", "b", "c"], SeededRandomness(0))
    with pytest.raises(SecAggViolation, match="asked for masked input while at advertise"):
        client.mask(np.zeros(2, dtype=np.int64))
    public = b"".join(client.advertise())
    with pytest.raises(SecAggAbort, match="1 live neighbour"):
        client.share_keys({"b": public})


def test_seeded_rounds_are_reproducible_and_the_seed_matters() -> None:
    n = 6
    params, degree = _round(n, 20)
    inputs = _inputs(n, 16, params.spec)
    clients = sorted(inputs)

    def first_masked(seed: int) -> np.ndarray:
        cl = {c: SecAggClient(c, params, clients, SeededRandomness(seed, c)) for c in clients}
        keys = {c: b"".join(x.advertise()) for c, x in cl.items()}
        graph = neighbours(clients, degree, seed)
        sealed = {u: cl[u].share_keys({v: keys[v] for v in graph[u]}) for u in clients}
        cid = clients[0]
        cl[cid].receive_shares({u: sealed[u][cid] for u in graph[cid]})
        return cl[cid].mask(inputs[cid])

    assert np.array_equal(first_masked(1), first_masked(1))
    assert not np.array_equal(first_masked(1), first_masked(2))
