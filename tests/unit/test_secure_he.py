"""Additive homomorphic aggregation under CKKS (fedllm.secure.he.ckks, the 'he' extra), and
the noise flooding of a decryption that leaves the client (issue 25 point 7)."""

from __future__ import annotations

import builtins
import math
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from scipy import stats

from fedllm.message import Message
from fedllm.secure.he import ckks as he
from fedllm.secure.he.client import HEClientPhases
from fedllm.secure.he.parts import (
    CHUNKS,
    DECRYPT_PHASE,
    FLOODING_STD,
    LENGTH,
    PLAIN_SUM,
    REFUSED,
    pack_chunks,
)
from fedllm.secure.randomness import SeededRandomness, SystemRandomness

ts = pytest.importorskip("tenseal")

# Measured at the default settings (scale 2^40, public-key encryption): the absolute
# error is ~1e-9 std and at most ~1.1e-8 per value for one client, ~3.7e-8 for a sum
# of 10 clients, whatever |x| (1e-2..10). 1e-5 leaves a margin of >100x and still
# catches any real mistake (a lost, doubled or misplaced chunk is off by ~|x| ~ 0.5).
ATOL = 1e-5


@pytest.fixture(scope="module")
def keys() -> he.HEKeys:
    return he.make_keys()


def test_sum_of_clients_matches_numpy(keys: he.HEKeys) -> None:
    slots = keys.settings.slots
    length = 2 * slots + 123  # three chunks, the last one partial
    rng = np.random.default_rng(0)
    updates: list[npt.NDArray[np.floating[Any]]] = [
        rng.uniform(-1.0, 1.0, length).astype(np.float32),
        rng.uniform(-1e-2, 1e-2, length).astype(np.float32),
        rng.uniform(-0.1, 0.1, length),
        rng.uniform(-1.0, 1.0, length),
    ]
    encrypted = [he.encrypt_vector(u, keys.public_context) for u in updates]
    assert all(len(e) == 3 for e in encrypted)

    acc = he.EncryptedSum(keys.public_context)
    for e in encrypted:
        acc.add(e)
    assert acc.clients == 4
    assert acc.length == length

    total = he.decrypt_vector(acc.result(), length, keys.secret_context)
    expected = np.sum([u.astype(np.float64) for u in updates], axis=0)
    assert total.dtype == np.float64
    assert total.shape == (length,)
    np.testing.assert_allclose(total, expected, rtol=0, atol=ATOL)
    # the mean the clients apply
    np.testing.assert_allclose(total / acc.clients, expected / 4, rtol=0, atol=ATOL)

    # the pairwise path gives the same sum
    pair = he.add_encrypted(encrypted[0], encrypted[1], keys.public_context)
    pair = he.add_encrypted(pair, encrypted[2], keys.public_context)
    pair = he.add_encrypted(pair, encrypted[3], keys.public_context)
    np.testing.assert_allclose(
        he.decrypt_vector(pair, length, keys.secret_context), expected, rtol=0, atol=ATOL
    )


def test_encrypted_with_the_secret_context_and_short_vectors(keys: he.HEKeys) -> None:
    x = np.array([0.5, -0.25, 1e-2], dtype=np.float64)
    chunks = he.encrypt_vector(x, keys.secret_context)
    assert len(chunks) == 1
    np.testing.assert_allclose(
        he.decrypt_vector(chunks, 3, keys.secret_context), x, rtol=0, atol=ATOL
    )
    assert he.encrypt_vector(np.zeros(0), keys.public_context) == []
    assert he.decrypt_vector([], 0, keys.secret_context).shape == (0,)


def test_the_server_context_cannot_decrypt(keys: he.HEKeys) -> None:
    chunks = he.encrypt_vector(np.ones(10), keys.public_context)

    # TenSEAL itself refuses: the public context really holds no secret key
    public = ts.context_from(keys.public_context)
    assert not public.has_secret_key()
    assert public.is_public()
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(public, chunks[0]).decrypt()
    assert ts.context_from(keys.secret_context).has_secret_key()

    # and fedllm's decrypt path says why
    with pytest.raises(he.HEKeyError, match="no secret key"):
        he.decrypt_vector(chunks, 10, keys.public_context)


def test_bytes_and_times_are_reported(keys: he.HEKeys) -> None:
    length = keys.settings.slots + 1
    rng = np.random.default_rng(1)
    cost = he.HECost()
    a = he.encrypt_vector(rng.uniform(-1, 1, length), keys.public_context, cost=cost)
    first_bytes = cost.bytes_up
    b = he.encrypt_vector(rng.uniform(-1, 1, length), keys.public_context, cost=cost)

    def real(chunks: list[bytes]) -> int:
        # each chunk is exactly the bytes TenSEAL serialized
        ctx = ts.context_from(keys.public_context)
        vectors = [ts.ckks_vector_from(ctx, c) for c in chunks]
        assert [v.size() for v in vectors] == [keys.settings.slots, 1]
        return sum(len(c) for c in chunks)

    assert first_bytes == real(a) == he.ciphertext_bytes(a)
    assert cost.bytes_up == real(a) + real(b)
    # a full ciphertext of the defaults is ~330 kB (2 polys x 8192 coeffs x 3 primes)
    assert 200_000 < len(a[0]) < 400_000
    assert cost.encrypt_seconds > 0

    acc = he.EncryptedSum(keys.public_context)
    acc.add(a)
    acc.add(b)
    assert acc.bytes_per_client == [real(a), real(b)]
    assert acc.cost.bytes_up == real(a) + real(b)
    assert acc.cost.add_seconds > 0

    he.add_encrypted(a, b, keys.public_context, cost=cost)
    he.decrypt_vector(acc.result(), length, keys.secret_context, cost=cost)
    assert cost.add_seconds > 0
    assert cost.decrypt_seconds > 0


def test_mismatched_clients_are_refused(keys: he.HEKeys) -> None:
    slots = keys.settings.slots
    a = he.encrypt_vector(np.ones(slots + 5), keys.public_context)
    acc = he.EncryptedSum(keys.public_context)
    acc.add(a)
    with pytest.raises(he.HEError, match="chunk sizes must match"):
        acc.add(he.encrypt_vector(np.ones(slots + 6), keys.public_context))
    with pytest.raises(he.HEError, match="chunk sizes must match"):
        acc.add(a[:1])
    with pytest.raises(he.HEError, match="chunk 0"):
        acc.add([b"not a ciphertext"])
    assert acc.clients == 1  # refused clients leave the sum as it was
    np.testing.assert_allclose(
        he.decrypt_vector(acc.result(), slots + 5, keys.secret_context), 1.0, rtol=0, atol=ATOL
    )
    with pytest.raises(he.HEError, match="chunk sizes must match"):
        he.add_encrypted(a, a[:1], keys.public_context)
    with pytest.raises(he.HEError, match="expected length"):
        he.decrypt_vector(a, slots, keys.secret_context)
    with pytest.raises(he.HEError, match="no client"):
        he.EncryptedSum(keys.public_context).result()
    with pytest.raises(he.HEError, match="not a serialized TenSEAL context"):
        he.encrypt_vector(np.ones(3), b"garbage")


def test_invalid_values_are_refused(keys: he.HEKeys) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        he.encrypt_vector(np.arange(3), keys.public_context)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        he.encrypt_vector(np.ones((2, 2)), keys.public_context)
    with pytest.raises(ValueError, match="finite"):
        he.encrypt_vector(np.array([1.0, np.nan]), keys.public_context)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poly_modulus_degree": 5000}, "power of two"),
        ({"poly_modulus_degree": 512}, "power of two"),
        ({"coeff_mod_bit_sizes": (60,)}, "at least 2 primes"),
        ({"coeff_mod_bit_sizes": (61, 40, 60)}, r"1\.\.60"),
        ({"coeff_mod_bit_sizes": (60, 40, 40, 40, 40, 60)}, "128-bit security"),
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 40, 40, 60)}, "109 bits"),
        ({"global_scale_bits": 0}, "positive"),
        ({"global_scale_bits": 60}, "below the first"),
        ({"global_scale_bits": 45}, "middle primes"),
    ],
)
def test_invalid_settings_say_why(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(he.HEError, match=message):
        he.CkksSettings(**kwargs)  # type: ignore[arg-type]


def test_valid_smaller_settings_work() -> None:
    settings = he.CkksSettings(
        poly_modulus_degree=4096, coeff_mod_bit_sizes=(38, 30, 38), global_scale_bits=30
    )
    assert settings.slots == 2048
    keys = he.make_keys(settings)
    x = np.linspace(-1, 1, 3000)
    chunks = he.encrypt_vector(x, keys.public_context)
    assert len(chunks) == 2
    # scale 2^30: the error grows 2^10-fold from 2^40's, measured at most ~4.4e-6
    np.testing.assert_allclose(
        he.decrypt_vector(chunks, x.size, keys.secret_context), x, rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("how", ["sys.modules", "import"])
def test_missing_tenseal_names_the_extra(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "sys.modules":
        monkeypatch.setitem(sys.modules, "tenseal", None)
    else:
        real_import = builtins.__import__

        def fake_import(name: str, *args: object, **kwargs: object) -> object:
            if name == "tenseal" or name.startswith("tenseal."):
                raise ImportError("No module named 'tenseal'")
            return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.delitem(sys.modules, "tenseal")
        monkeypatch.setattr(builtins, "__import__", fake_import)
    for call in (
        he.make_keys,
        lambda: he.encrypt_vector(np.ones(3), b""),
        lambda: he.EncryptedSum(b""),
        lambda: he.decrypt_vector([], 0, b""),
        lambda: he.add_encrypted([], [], b""),
    ):
        with pytest.raises(he.HEUnavailable, match=r"'he' extra: pip install 'fedllm\[he\]'"):
            call()
    assert issubclass(he.HEUnavailable, RuntimeError)


# --- The decryption error and its flooding (Li and Micciancio 2021) ----------------------

N, SCALE = 8192, 2.0**40  # the defaults


def openfhe_sigma(bits: int, queries: int, summed: int) -> float:
    """The flooding std per decrypted value, transcribed from OpenFHE's
    CKKS_NOISE_FLOODING.md (sigma = sqrt(12 tau) 2^(s/2) t, per ring coefficient) with
    t = 8 error stds of a coefficient (variance (2 + 2N/3)/12 per fresh encryption),
    carried to a slot's real part by sqrt(N/2) / scale."""
    t = 8 * math.sqrt(summed * (2 + 2 * N / 3) / 12)
    return math.sqrt(12 * queries) * 2 ** (bits / 2) * t * math.sqrt(N / 2) / SCALE


def coefficient_errors(keys: he.HEKeys, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The decryption error of a fresh encryption of ``x`` (N/2 values) as ring
    coefficients: SEAL's decryption decoded to complex slots, minus ``x``, times the
    scale, mapped back by the inverse canonical embedding (slot j is the evaluation at
    zeta^(5^j), zeta = exp(i pi / N); the conjugate roots hold the conjugates)."""
    import tenseal.sealapi as sealapi

    ctx = ts.context_from(keys.secret_context)
    seal = ctx.seal_context().data
    plain = sealapi.Plaintext()
    vector = ts.ckks_vector_from(ctx, he.encrypt_vector(x, keys.public_context)[0])
    sealapi.Decryptor(seal, ctx.secret_key().data).decrypt(vector.ciphertext()[0], plain)
    slots = (np.asarray(sealapi.CKKSEncoder(seal).decode_complex(plain)) - x) * SCALE
    powers = np.array([pow(5, j, 2 * N) for j in range(N // 2)])
    exponents = np.concatenate([powers, 2 * N - powers])
    values = np.concatenate([slots, np.conj(slots)])[np.argsort(exponents)]  # roots 1, 3, ...
    n = np.arange(N)
    coefficients = np.exp(-1j * np.pi * n / N) * np.fft.fft(values) / N
    assert np.abs(coefficients.imag).max() < 1e-9  # a real polynomial: the map is right
    return np.asarray(coefficients.real)


def test_the_error_model_holds_in_the_ring_and_in_the_values(keys: he.HEKeys) -> None:
    rng = np.random.default_rng(3)
    errors = np.concatenate(
        [coefficient_errors(keys, rng.uniform(-1, 1, N // 2)) for _ in range(3)]
    )
    model = he.coefficient_error_std(N)
    assert model == pytest.approx(math.sqrt((2 + 2 * N / 3) / 12))  # 21.34
    # 24,576 coefficients: the std within 3% (its sampling error is 0.5%), every one
    # below the bound t the flooding is sized from
    assert errors.std() == pytest.approx(model, rel=0.03)
    assert np.abs(errors).max() < he.ERROR_BOUND_STDS * model
    assert np.abs(errors).max() > 3 * model  # the bound is not vacuous by a factor 2

    # the values: a sum of k fresh encryptions has sqrt(k) times the error
    length = 4 * keys.settings.slots
    for k in (1, 4):
        xs = [rng.uniform(-1, 1, length) for _ in range(k)]
        acc = he.EncryptedSum(keys.public_context)
        for x in xs:
            acc.add(he.encrypt_vector(x, keys.public_context))
        error = he.decrypt_vector(acc.result(), length, keys.secret_context) - np.sum(xs, 0)
        expected = model * math.sqrt(k) * math.sqrt(N / 2) / SCALE  # 1.24e-9 * sqrt(k)
        assert he.decryption_error_std(N, SCALE, k) == pytest.approx(expected)
        assert error.std() == pytest.approx(expected, rel=0.03)


def test_flooding_size_is_openfhe_formula() -> None:
    for bits, queries, summed in ((20, 1, 1), (20, 3, 4), (30, 10, 7), (1, 1, 1)):
        flooding = he.Flooding(bits=bits, decryptions=queries, summed=summed)
        assert flooding.std(N, SCALE) == pytest.approx(openfhe_sigma(bits, queries, summed))
    # the numbers the docs state: 3.44e-8 * 2^(s/2) * sqrt(tau * summed) per value
    assert he.Flooding(bits=20, summed=4).std(N, SCALE) == pytest.approx(7.05e-5, rel=1e-3)
    assert he.Flooding(bits=30).std(N, SCALE) == pytest.approx(1.13e-3, rel=1e-2)
    assert he.Flooding(bits=0, decryptions=9, summed=9).std(N, SCALE) == 0.0
    for bad in ({"bits": -1}, {"decryptions": 0}, {"summed": 0}, {"bits": 2.5}):
        with pytest.raises(he.HEError, match="must be an int"):
            he.Flooding(**bad)  # type: ignore[arg-type]


def test_flooded_values_minus_the_exact_decryption_are_the_flooding_gaussian(
    keys: he.HEKeys,
) -> None:
    length = 4 * keys.settings.slots  # 16,384 values
    x = np.random.default_rng(4).uniform(-1, 1, length)
    chunks = he.encrypt_vector(x, keys.public_context)
    exact = he.decrypt_vector(chunks, length, keys.secret_context)
    flooding = he.Flooding(bits=20, decryptions=3, summed=4)
    rng = SeededRandomness(0, "test-flooding")  # the test's own stream, reproducible
    cost = he.HECost()
    flooded, std = he.decrypt_flooded(
        chunks, length, keys.secret_context, flooding, rng=rng, cost=cost
    )
    assert cost.decrypt_seconds > 0
    assert std == pytest.approx(openfhe_sigma(20, 3, 4))  # 2.1e-4
    noise = flooded - exact
    assert abs(noise.mean()) < 4 * std / math.sqrt(length)
    assert noise.std() == pytest.approx(std, rel=0.03)  # sampling error 0.55%
    assert stats.kstest(noise / std, "norm").pvalue > 1e-3
    # not a scaled copy of the ciphertext's error or anything else: a wrong scale fails
    assert stats.kstest(noise / (1.1 * std), "norm").pvalue < 1e-6
    # the noise is the stream's: the same stream gives the same values
    again, _ = he.decrypt_flooded(
        chunks, length, keys.secret_context, flooding, rng=SeededRandomness(0, "test-flooding")
    )
    np.testing.assert_array_equal(again, flooded)


def test_two_decryptions_of_one_ciphertext_differ_by_fresh_system_noise(
    keys: he.HEKeys,
) -> None:
    length = 2 * keys.settings.slots
    chunks = he.encrypt_vector(np.linspace(-1, 1, length), keys.public_context)
    flooding = he.Flooding(bits=20, summed=2)
    a, std = he.decrypt_flooded(chunks, length, keys.secret_context, flooding)  # the OS CSPRNG
    b, _ = he.decrypt_flooded(chunks, length, keys.secret_context, flooding)
    assert np.count_nonzero(a == b) == 0
    # independent draws: their difference has std sqrt(2) sigma
    assert (a - b).std() == pytest.approx(math.sqrt(2) * std, rel=0.05)
    exact = he.decrypt_vector(chunks, length, keys.secret_context)
    assert (a - exact).std() == pytest.approx(std, rel=0.05)


def test_the_aggregate_stays_within_the_stated_error(keys: he.HEKeys) -> None:
    length, k = 3 * keys.settings.slots, 4
    rng = np.random.default_rng(5)
    updates = [rng.uniform(-1e-3, 1e-3, length) for _ in range(k)]  # LoRA-update sized
    acc = he.EncryptedSum(keys.public_context)
    for u in updates:
        acc.add(he.encrypt_vector(u, keys.public_context))
    flooding = he.Flooding(bits=20, decryptions=1, summed=k)
    total, std = he.decrypt_flooded(
        acc.result(), length, keys.secret_context, flooding, rng=SeededRandomness(1, "agg")
    )
    stated = math.hypot(std, he.decryption_error_std(N, SCALE, k)) / k  # per mean value
    assert stated == pytest.approx(1.76e-5, rel=1e-2)  # about 2% of a 1e-3 update
    error = total / k - np.mean(updates, axis=0)
    assert error.std() == pytest.approx(stated, rel=0.03)
    assert np.abs(error).max() < 6 * stated  # P(|Z| > 6) ~ 2e-9 per value


def test_flooding_off_returns_the_exact_decryption(keys: he.HEKeys) -> None:
    chunks = he.encrypt_vector(np.linspace(-1, 1, 100), keys.public_context)
    exact = he.decrypt_vector(chunks, 100, keys.secret_context)
    raw, std = he.decrypt_flooded(chunks, 100, keys.secret_context, he.Flooding(bits=0))
    assert std == 0.0
    np.testing.assert_array_equal(raw, exact)


def test_a_ciphertext_that_is_not_a_sum_of_fresh_ones_is_refused(keys: he.HEKeys) -> None:
    chunk = he.encrypt_vector(np.ones(10), keys.public_context)[0]
    public = ts.context_from(keys.public_context)
    rescaled = ts.ckks_vector_from(public, chunk) * 2.0  # the scale back, a level lower
    public.auto_rescale = False
    scaled = ts.ckks_vector_from(public, chunk) * 2.0  # the first level, scale 2^80
    for vector, words in ((rescaled, "a lower level"), (scaled, r"scale 2\^80\.0")):
        with pytest.raises(he.HEError, match=f"{words}.*not a sum of fresh encryptions"):
            he.decrypt_flooded([vector.serialize()], 10, keys.secret_context, he.Flooding())
    # a sum of fresh ones passes
    total = he.add_encrypted([chunk], [chunk], keys.public_context)
    values, _ = he.decrypt_flooded(total, 10, keys.secret_context, he.Flooding(bits=0))
    np.testing.assert_allclose(values, 2.0, rtol=0, atol=ATOL)


def test_standard_normal_from_bytes() -> None:
    z = he.standard_normal(200_001, SeededRandomness(7, "normal"))
    assert z.shape == (200_001,)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    np.testing.assert_array_equal(z[:10], he.standard_normal(10, SeededRandomness(7, "normal")))
    system = SystemRandomness()
    assert not np.array_equal(he.standard_normal(8, system), he.standard_normal(8, system))
    assert he.standard_normal(0, system).shape == (0,)
    with pytest.raises(ValueError, match="cannot draw"):
        he.standard_normal(-1, system)


def test_the_decrypting_client_replies_flooded_with_its_noise(keys: he.HEKeys) -> None:
    length = keys.settings.slots + 7
    x = np.random.default_rng(6).uniform(-1, 1, length)
    chunks = he.encrypt_vector(x, keys.public_context)
    flooding = he.Flooding(bits=20, decryptions=2, summed=3)
    phases = HEClientPhases(
        None,  # type: ignore[arg-type]  # the decrypt phase trains nothing
        keys.secret_context,
        flooding,
        rng=SeededRandomness(2, "client"),
    )
    decrypt = phases.handlers()[DECRYPT_PHASE]
    request = Message(config={CHUNKS: pack_chunks(chunks), LENGTH: length})
    reply = decrypt("coding", DECRYPT_PHASE, request)
    std = reply.metrics[FLOODING_STD]
    assert std == pytest.approx(openfhe_sigma(20, 2, 3))
    total = reply.arrays[PLAIN_SUM]
    assert isinstance(total, torch.Tensor) and total.dtype == torch.float64
    exact = he.decrypt_vector(chunks, length, keys.secret_context)
    noise = total.numpy() - exact
    assert noise.std() == pytest.approx(std, rel=0.05)
    # the client's default source is the OS CSPRNG: two replies differ
    phases = HEClientPhases(None, keys.secret_context, flooding)  # type: ignore[arg-type]
    first = phases.handlers()[DECRYPT_PHASE]("coding", DECRYPT_PHASE, request)
    second = phases.handlers()[DECRYPT_PHASE]("coding", DECRYPT_PHASE, request)
    assert not torch.equal(first.arrays[PLAIN_SUM], second.arrays[PLAIN_SUM])
    # a ciphertext it cannot decrypt is refused with the reason, not a crash
    bad = Message(config={CHUNKS: pack_chunks(chunks), LENGTH: length + 1})
    assert "expected length" in str(decrypt("coding", DECRYPT_PHASE, bad).config[REFUSED])
