"""SecAgg+ rounds among in-process clients: the exact sum under dropouts at every phase,
a clean abort beyond what the threshold tolerates, uniform masked inputs, refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedllm.client.side import ClientSide
from fedllm.deploy.certs import node_key_pair
from fedllm.message import Message
from fedllm.secure.errors import AuthenticationError, SecAggAbort, SecAggViolation
from fedllm.secure.keys import (
    agree,
    context_label,
    generate_key_pair,
    load_node_key,
    load_node_public_key,
    open_sealed,
    sign_advertised,
    verify_advertised,
)
from fedllm.secure.messages import encode_ids, unpack_plaintext
from fedllm.secure.randomness import SeededRandomness
from fedllm.secure.secagg import shamir
from fedllm.secure.secagg.client import SecAggClientPhases
from fedllm.secure.secagg.client_round import SecAggClient
from fedllm.secure.secagg.graph import default_degree, neighbours
from fedllm.secure.secagg.params import RoundParams, default_threshold, tolerated_dropouts
from fedllm.secure.secagg.parts import ADVERTISE, COHORT, PUBLIC, SIGNATURE
from fedllm.secure.secagg.ring import RingSpec
from fedllm.secure.secagg.server_round import SecAggServer
from fedllm.secure.secagg.shamir import SHARE_BYTES
from fedllm.secure.secagg.simulate import PHASES, simulate_round

Signers = dict[str, ec.EllipticCurvePrivateKey]


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


# -- issue 25 (8b): a malformed client message is a drop or an abort, never a crash ------


def _flip_share(
    owner_of: str, replace: bytes
) -> Callable[[str, dict[str, bytes]], dict[str, bytes]]:
    """A tamper hook: ``owner_of`` reveals ``replace`` (after its 4-byte index, unless
    ``replace`` is the whole message) for its first neighbour."""

    def tamper(client: str, revealed: dict[str, bytes]) -> dict[str, bytes]:
        if client != owner_of or not revealed:
            return revealed
        victim = sorted(revealed)[0]
        data = revealed[victim]
        forged = replace if len(replace) != SHARE_BYTES else data[:4] + replace
        return {**revealed, victim: forged}

    return tamper


GARBAGE = {
    "not a field element": b"\xff" * SHARE_BYTES,
    "a field element off the polynomial": (12345).to_bytes(SHARE_BYTES, "big"),
    "the wrong length": b"\x00\x00\x00\x01" + b"\x07" * 10,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_malformed_share_drops_its_sender_and_the_sum_stays_exact(kind: str) -> None:
    n = 16  # k = 8, t = 6: every secret has 8 shareholders, the culprit is outvoted
    params, degree = _round(n)
    inputs = _inputs(n, 64, params.spec)
    bad = "client_03"
    outcome = simulate_round(inputs, params, degree, 7, tamper=_flip_share(bad, GARBAGE[kind]))
    assert outcome.abort is None, outcome.abort
    assert list(outcome.dropped) == [bad]
    assert outcome.survivors == sorted(inputs)  # its masked input is in the sum
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, sorted(inputs)))


def test_a_wrong_mask_key_share_of_a_dropped_client_is_caught_by_its_public_key() -> None:
    n = 16
    params, degree = _round(n)
    inputs = _inputs(n, 64, params.spec)
    graph = neighbours(sorted(inputs), degree, 9)
    gone = "client_05"
    bad = graph[gone][0]

    def tamper(client: str, revealed: dict[str, bytes]) -> dict[str, bytes]:
        if client != bad:
            return revealed
        data = revealed[gone]  # the share of the dropped client's mask key
        wrong = (shamir.share_value(data[4:]) + 1) % shamir.PRIME
        return {**revealed, gone: data[:4] + wrong.to_bytes(SHARE_BYTES, "big")}

    outcome = simulate_round(inputs, params, degree, 9, {"masked": {gone}}, tamper=tamper)
    assert outcome.abort is None, outcome.abort
    assert f"share of {gone!r}'s mask key" in outcome.dropped[bad]
    survivors = sorted(set(inputs) - {gone})
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, survivors))


@pytest.mark.parametrize("kind", ["not a field element", "a field element off the polynomial"])
def test_a_malformed_share_that_cannot_be_outvoted_aborts_naming_the_secret(kind: str) -> None:
    # n = 3, k = 2, t = 2: each secret has exactly t shares, a wrong one cannot be told
    params, degree = RoundParams(RingSpec(24, 1.0, 3), 2, 1), 2
    inputs = _inputs(3, 8, params.spec)
    outcome = simulate_round(
        inputs, params, degree, 0, tamper=_flip_share("client_01", GARBAGE[kind])
    )
    assert outcome.total is None and outcome.abort is not None
    if kind == "not a field element":  # refused on arrival: its sender is dropped
        assert "client_01" in outcome.dropped
        assert "fewer than the threshold 2" in outcome.abort
    else:
        assert "do not rebuild it" in outcome.abort and "cannot be told" in outcome.abort
        assert "self-mask seed" in outcome.abort


def test_the_server_refuses_bad_keys_and_malformed_masked_inputs() -> None:
    params = RoundParams(RingSpec(16, 1.0, 4), 2, 1)
    server = SecAggServer(params, ["a", "b", "c", "d"], 2, 0, 5)
    server.receive_keys("a", bytes(32), bytes(range(32)))  # a low-order point
    server.receive_keys("b", bytes(range(31)), bytes(range(32)))
    assert "low-order" in server.dropped["a"] and "32 bytes" in server.dropped["b"]
    assert "a" not in server.keys and "b" not in server.keys
    server.shared.update({"c", "d"})
    server.receive_masked("c", np.zeros(4, dtype=np.int64))
    server.receive_masked("d", np.zeros(5, dtype=np.float64))
    assert "(5,)" in server.dropped["c"] and "float64" in server.dropped["d"]
    assert not server.masked


def test_an_input_outside_its_levels_aborts_instead_of_dequantising_garbage() -> None:
    n = 6
    params, degree = _round(n, 20)
    top = n * (params.spec.levels - 1)
    inputs = {f"client_{i:02d}": np.zeros(4, dtype=np.int64) for i in range(n)}
    inputs["client_02"] = np.full(4, top + 1, dtype=np.int64)  # in the ring, not a level
    outcome = simulate_round(inputs, params, degree, 3)
    assert outcome.total is None and outcome.abort is not None
    assert f"above {top}" in outcome.abort and "outside [0," in outcome.abort


def test_a_bad_advertised_key_drops_its_client_and_the_round_finishes() -> None:
    n = 8
    params, degree = _round(n)
    inputs = _inputs(n, 16, params.spec)
    original = SecAggClient.advertise

    def advertise(self: SecAggClient) -> tuple[bytes, bytes]:
        public_c, public_s = original(self)
        return (public_c, bytes(32)) if self.client_id == "client_04" else (public_c, public_s)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SecAggClient, "advertise", advertise)
        outcome = simulate_round(inputs, params, degree, 1)
    assert outcome.abort is None and list(outcome.dropped) == ["client_04"]
    survivors = sorted(set(inputs) - {"client_04"})
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, survivors))


# -- issue 25 (10a): a client refuses a lying server's unmask request -----------------


def _masked_client(k: int, t: int) -> tuple[SecAggClient, list[str]]:
    """Client ``c0`` of a complete graph on k + 1 clients, after its masked input: it
    holds the shares of its k neighbours."""
    ids = [f"c{i}" for i in range(k + 1)]
    params = RoundParams(RingSpec(16, 1.0, k + 1), t, 2)
    clients = {c: SecAggClient(c, params, ids, SeededRandomness(4, c)) for c in ids}
    keys = {c: b"".join(x.advertise()) for c, x in clients.items()}
    sealed = {
        u: clients[u].share_keys({v: keys[v] for v in ids if v != u}) for u in ids if u != "c0"
    }
    target = clients["c0"]
    target.share_keys({v: keys[v] for v in ids if v != "c0"})
    target.receive_shares({u: sealed[u]["c0"] for u in sealed})
    target.mask(np.zeros(3, dtype=np.int64))
    return target, ids[1:]


LIES = {
    "t - 1 neighbours": lambda near, t: (near[: t - 1], near[t - 1 :]),
    "t - 1 neighbours and itself": lambda near, t: (["c0", *near[: t - 1]], near[t - 1 :]),
    "t - 1 neighbours and strangers": lambda near, t: ([*near[: t - 1], "x1", "x2", "x3"], []),
}


@pytest.mark.parametrize("lie", sorted(LIES))
@pytest.mark.parametrize(("k", "t"), [(2, 2), (8, 6), (8, 8)])
def test_a_client_reveals_nothing_when_told_fewer_than_t_neighbours_survived(
    k: int, t: int, lie: str
) -> None:
    """An honest server never asks this (the client's own seed could not be rebuilt, the
    round would abort), so only the client's own check stands between a lying server
    and the shares."""
    client, near = _masked_client(k, t)
    alive, gone = LIES[lie](near, t)
    with pytest.raises(SecAggAbort, match=f"sees {t - 1} survivor"):
        client.unmask(alive, gone)
    honest = _masked_client(k, t)[0].unmask(near[:t], near[t:])
    assert sorted(honest) == near  # t self-mask shares and k - t mask-key shares


def test_a_client_refuses_a_request_for_both_secrets_or_a_second_request() -> None:
    k, t = 8, 6
    client, near = _masked_client(k, t)
    with pytest.raises(SecAggViolation, match="twice"):
        client.unmask([near[0], *near[:t]], near[t:])
    client, near = _masked_client(k, t)
    with pytest.raises(SecAggViolation, match="both survivors and dropped"):
        client.unmask(near, [near[0]])
    client, near = _masked_client(k, t)
    with pytest.raises(SecAggViolation, match="told it dropped"):
        client.unmask(near, ["c0"])
    client, near = _masked_client(k, t)
    first = client.unmask(near, [])  # every self-mask share ...
    with pytest.raises(SecAggViolation, match="asked for unmask while at done"):
        client.unmask([], near)  # ... then every mask-key share: refused
    assert len(first) == k


# -- issue 25 (8d): advertised keys signed with the nodes' authentication keys ----------


def _node_keys(ids: list[str]) -> dict[str, ec.EllipticCurvePrivateKey]:
    """Each client's node key, in the format ``fedllm deploy certs`` writes (OpenSSH)."""
    return {c: load_node_key(node_key_pair(f"node-{c}")[0]) for c in ids}


def _neighbourhood(signed: bool) -> tuple[dict[str, SecAggClient], SecAggServer, Signers]:
    """Five clients, k = 4, t = 3, after advertising; with a roster of their node keys
    (read back from the public key lines) if ``signed``."""
    ids = ["a", "b", "c", "d", "e"]
    pairs = {c: node_key_pair(f"node-{c}") for c in ids}
    signers = {c: load_node_key(private) for c, (private, _) in pairs.items()}
    roster = {c: load_node_public_key(public) for c, (_, public) in pairs.items()}
    params = RoundParams(RingSpec(16, 1.0, 5), 3, 6)
    clients = {
        c: SecAggClient(c, params, ids, SeededRandomness(2, c), signers[c], roster)
        if signed
        else SecAggClient(c, params, ids, SeededRandomness(2, c))
        for c in ids
    }
    server = SecAggServer(params, ids, 4, 0, 3, roster=roster if signed else None)
    for c, client in clients.items():
        server.receive_keys(c, *client.advertise(), client.signature)
    return clients, server, signers


def test_signed_rounds_give_the_exact_sum_and_a_wrong_signer_is_dropped() -> None:
    n = 8
    params, degree = _round(n)
    inputs = _inputs(n, 16, params.spec)
    signers = _node_keys(sorted(inputs))
    outcome = simulate_round(inputs, params, degree, 4, signers=signers)
    assert outcome.abort is None and outcome.dropped == {}
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, sorted(inputs)))
    # client_03 signs with a key that is not its node's: the server drops it at once
    impostor = ec.generate_private_key(ec.SECP384R1())
    original = SecAggClient.advertise

    def advertise(self: SecAggClient) -> tuple[bytes, bytes]:
        if self.client_id == "client_03":
            self.signer = impostor
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SecAggClient, "advertise", advertise)
        outcome = simulate_round(inputs, params, degree, 4, signers=signers)
    assert outcome.abort is None and list(outcome.dropped) == ["client_03"]
    assert "signature" in outcome.dropped["client_03"]
    assert outcome.total is not None
    assert np.array_equal(outcome.total, _plain_sum(inputs, sorted(set(inputs) - {"client_03"})))


def test_unsigned_keys_let_a_server_that_swaps_one_read_the_shares() -> None:
    """The honest-but-curious model's limit, shown: the attack the signatures stop."""
    clients, server, _ = _neighbourhood(signed=False)
    request = server.share_requests()["a"]
    victim = sorted(request)[0]
    attacker = generate_key_pair(SeededRandomness(99))
    swapped = {**request, victim: attacker.public + request[victim][32:]}
    sealed = clients["a"].share_keys(swapped)
    key = agree(attacker.private, server.keys["a"][0], context_label("encrypt", 6, "a", victim))
    plaintext = open_sealed(key, sealed[victim], sender="a", recipient=victim, round_id=6)
    assert unpack_plaintext(plaintext)[0] == sorted(clients).index(victim) + 1


FORGERIES = [
    "encryption key swapped",
    "mask key swapped",
    "re-signed by the server",
    "signed for another round",
    "another client's keys",
    "no signature",
    "not in the roster",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_client_refuses_keys_its_neighbour_did_not_sign(forgery: str) -> None:
    clients, server, signers = _neighbourhood(signed=True)
    request = server.share_requests()["a"]
    victim, other = sorted(request)[:2]
    attacker = generate_key_pair(SeededRandomness(99)).public
    public_c, public_s = server.keys[victim]
    signature = server.signatures[victim]
    forged = {
        "encryption key swapped": attacker + public_s + signature,
        "mask key swapped": public_c + attacker + signature,
        "re-signed by the server": attacker
        + public_s
        + sign_advertised(ec.generate_private_key(ec.SECP384R1()), 6, victim, attacker, public_s),
        "signed for another round": attacker
        + public_s
        + sign_advertised(signers[victim], 5, victim, attacker, public_s),
        "another client's keys": request[other],
        "no signature": attacker + public_s,
        "not in the roster": request[victim],
    }[forgery]
    client = clients["a"]
    if forgery == "not in the roster":
        assert client.roster is not None
        client.roster = {c: k for c, k in client.roster.items() if c != victim}
    error = SecAggViolation if forgery == "no signature" else AuthenticationError
    with pytest.raises(error, match="signature" if forgery == "no signature" else repr(victim)):
        client.share_keys({**request, victim: forged})
    fresh, honest_server, _ = _neighbourhood(signed=True)
    assert fresh["a"].share_keys(honest_server.share_requests()["a"])  # genuine keys pass


def test_the_client_phases_send_the_signature_with_the_keys() -> None:
    signer = _node_keys(["a"])["a"]
    params = RoundParams(RingSpec(16, 1.0, 3), 2, 1)
    phases = SecAggClientPhases(cast(ClientSide, None), 0, True, signer=signer)
    request = Message(config={**params.to_config(), COHORT: encode_ids(["a", "b", "c"])})
    reply = phases.handlers()[ADVERTISE]("a", ADVERTISE, request)
    public, signature = reply.config[PUBLIC], reply.config[SIGNATURE]
    assert isinstance(public, bytes) and isinstance(signature, bytes)
    verify_advertised({"a": signer.public_key()}, signature, 1, "a", public[:32], public[32:])
