"""Additive homomorphic aggregation under CKKS (fedllm.secure.he, the 'he' extra)."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedllm.secure import he

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
