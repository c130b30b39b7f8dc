"""Additive homomorphic aggregation of client updates under CKKS (TenSEAL).

The clients share one CKKS secret key; the server holds only the public context
(parameters and public key, no secret key). Each client encrypts its flat update,
chunked by the slot count (``poly_modulus_degree / 2`` values per ciphertext), the
server adds the ciphertexts without being able to read them (:func:`add_encrypted`,
or :class:`EncryptedSum` one client at a time) and sends the encrypted sum back, and
the clients decrypt it (:func:`decrypt_vector`) and divide by the client count to
get the mean. TenSEAL is optional: install the ``he`` extra (``pip install
'fedllm[he]'``); without it this module imports and every operation raises
:class:`HEUnavailable`.

Numerical note: CKKS is approximate. At the default settings (degree 8192, primes
(60, 40, 40, 60) bits, scale 2^40, public-key encryption) the measured absolute error
of a decrypted value is independent of its magnitude (same for ``|x|`` ~ 1e-2, 1e-1,
1 and 10): about 1e-9 standard deviation and at most ~1.1e-8 over 32k values for one
client, growing like the square root of the number of independently encrypted
clients summed (max ~1.4e-8 for 2, ~3.7e-8 for 10; linearly at worst: 6.8e-8 for the
same ciphertext added 6 times). That is below float32's resolution near 1 (6e-8), so
``1e-5`` absolute is a tolerance with a margin of more than 100x for sums of tens of
clients. The error scales as 2^-scale_bits: 30 bits give a few 1e-6 (measured 4.4e-6).

Costs (measured, one CPU core, default settings): a ciphertext of 4096 values is
~331,500 bytes, ~81 bytes per value, ~20x the float32 plaintext (4 bytes per value).
For 1,000,000 values (245 ciphertexts): encryption ~1.2 s and 81.2 MB per client
(20.3x the 4 MB of float32), server-side addition ~0.17 s per client (mostly
deserialization), decryption ~0.38 s. The public context is ~465 kB, the secret one
~697 kB.

Security notes: any holder of the secret context can decrypt every ciphertext made
under it, so the client-to-server channel must be confidential (TLS) or the clients
can read each other's updates; the server must not collude with a client. The
decrypted aggregate must not be handed back to the server, who holds its ciphertext,
without noise: a CKKS decryption is the plaintext plus the ciphertext's error, a
linear function of the secret key, so a passive server recovers the key from it (Li
and Micciancio, 2021). :func:`decrypt_vector` returns that raw decryption (for the
client's own use); :func:`decrypt_flooded` adds the flooding noise of
:class:`Flooding` first, the mitigation to use whenever the result leaves the client.

The decryption error (:func:`decryption_error_std`): TenSEAL encrypts with the public
key at the key level and drops the special prime by dividing by it, so the fresh
encryption noise (a few hundred) shrinks to nothing and the rounding leaves
``r0 + r1*s`` (``r`` uniform in [-1/2, 1/2], the secret ``s`` ternary, 2/3 of its
coefficients nonzero), plus the encoding's rounding (variance 1/12): each coefficient
of the error has variance ``(2 + 2N/3) / 12`` (std 21.3 at N = 8192), ``k`` times that for a sum of
``k`` fresh encryptions. A value (the real part of a slot, divided by the scale) has
std ``sqrt(N/2) / scale`` times that: 1.242e-9 predicted at the defaults, 1.242e-9
measured for one client, 2.484e-9 against 2.487e-9 for 4, 3.93e-9 against 3.95e-9
for 10. The per-value error is heavier-tailed than a Gaussian (kurtosis ~6, a max of
7 to 8 stds over 32k values), because its variance in slot ``i`` is proportional to
``|s(zeta_i)|^2``: it varies over the slots with the secret key, one more reason not
to release it raw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedllm.secure.randomness import Randomness, SystemRandomness

__all__ = [
    "CkksSettings",
    "EncryptedSum",
    "Flooding",
    "HECost",
    "HEError",
    "HEKeyError",
    "HEKeys",
    "HEUnavailable",
    "add_encrypted",
    "ciphertext_bytes",
    "coefficient_error_std",
    "context_parameters",
    "decrypt_flooded",
    "decrypt_vector",
    "decryption_error_std",
    "encrypt_vector",
    "make_keys",
    "standard_normal",
]

MISSING_EXTRA = "homomorphic encryption needs the 'he' extra: pip install 'fedllm[he]' (tenseal)"

MAX_COEFF_MODULUS_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
"""Largest total coefficient modulus (bits) for 128-bit security per polynomial degree
(the homomorphic encryption standard; SEAL refuses larger ones)."""


class HEUnavailable(RuntimeError):
    """TenSEAL is not installed (the ``he`` extra)."""


class HEError(ValueError):
    """Invalid settings, context bytes or ciphertexts (with what was expected)."""


class HEKeyError(HEError):
    """A context without the secret key was asked to decrypt."""


@dataclass(frozen=True)
class CkksSettings:
    """CKKS encryption parameters.

    Attributes:
        poly_modulus_degree: ring dimension N, a power of two in 1024..32768; a
            ciphertext holds N/2 values (slots).
        coeff_mod_bit_sizes: bit sizes of the coefficient modulus primes, each 1..60:
            the first is the data prime, the last the special (key-switching) prime,
            those between the rescaling primes. Their total is capped for 128-bit
            security (:data:`MAX_COEFF_MODULUS_BITS`: 218 bits at N=8192).
        global_scale_bits: log2 of the encoding scale Delta (values are encoded as
            round(x * 2^bits)); below the first prime's bits (the rest holds the
            integer part) and at most each middle prime's bits.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    global_scale_bits: int = 40

    def __post_init__(self) -> None:
        degree = self.poly_modulus_degree
        if (
            isinstance(degree, bool)
            or not isinstance(degree, int)
            or degree not in MAX_COEFF_MODULUS_BITS
        ):
            raise HEError(
                f"poly_modulus_degree must be a power of two in 1024..32768, got {degree!r}"
            )
        sizes = tuple(self.coeff_mod_bit_sizes)
        if len(sizes) < 2:
            raise HEError(
                "coeff_mod_bit_sizes needs at least 2 primes (data prime and special prime), "
                f"got {sizes!r}"
            )
        for bits in sizes:
            if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 60:
                raise HEError(
                    f"each coeff_mod_bit_sizes entry must be an int in 1..60, got {sizes!r}"
                )
        limit = MAX_COEFF_MODULUS_BITS[degree]
        if sum(sizes) > limit:
            raise HEError(
                f"coeff_mod_bit_sizes {sizes!r} total {sum(sizes)} bits, above the "
                f"{limit} bits allowed for 128-bit security at poly_modulus_degree {degree}"
            )
        scale = self.global_scale_bits
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise HEError(f"global_scale_bits must be a positive int, got {scale!r}")
        if scale >= sizes[0]:
            raise HEError(
                f"global_scale_bits {scale} must be below the first (data) prime's "
                f"{sizes[0]} bits, which also hold the integer part of the values"
            )
        middle = sizes[1:-1]
        if middle and scale > min(middle):
            raise HEError(
                f"global_scale_bits {scale} must not exceed the middle primes' bits "
                f"{middle!r} (rescaling divides by them)"
            )
        object.__setattr__(self, "coeff_mod_bit_sizes", sizes)

    @property
    def slots(self) -> int:
        """Values per ciphertext (poly_modulus_degree / 2)."""
        return self.poly_modulus_degree // 2


@dataclass(frozen=True)
class HEKeys:
    """Serialized TenSEAL contexts of one federation.

    Attributes:
        settings: the parameters they were made with.
        secret_context: context with the secret and public keys (bytes); the clients
            share it and never send it to the server.
        public_context: the same context without the secret key (bytes), for the
            server: it can encrypt and add, not decrypt.
    """

    settings: CkksSettings
    secret_context: bytes = field(repr=False)
    public_context: bytes = field(repr=False)


ERROR_BOUND_STDS = 8.0
"""The bound ``t`` on a coefficient of the decryption error that :class:`Flooding` takes,
in standard deviations of it (:func:`coefficient_error_std`). A coefficient is a sum of
thousands of independent bounded terms (|term| <= 1/2): Bernstein's inequality puts
``|e| > 8 std`` below 1e-13 per coefficient at N = 8192 (a Gaussian's 1.2e-15)."""


def coefficient_error_std(poly_modulus_degree: int, summed: int = 1) -> float:
    """Standard deviation of one coefficient of the CKKS decryption error, in units of
    the ring (values times the scale), for a sum of fresh public-key encryptions.

    The model of the module docstring: ``sqrt(summed * (2 + 2N/3) / 12)``; it depends
    neither on the values nor on the scale.

    Args:
        poly_modulus_degree: the ring dimension N.
        summed: fresh ciphertexts added together (their errors are independent).
    """
    return math.sqrt(summed * (2 + 2 * poly_modulus_degree / 3) / 12)


def decryption_error_std(poly_modulus_degree: int, scale: float, summed: int = 1) -> float:
    """Standard deviation of the CKKS error of one decrypted value (in value units), for
    a sum of ``summed`` fresh public-key encryptions at ``scale``.

    A value is the real part of a slot, the ring element evaluated at a root of unity and
    divided by the scale, so :func:`coefficient_error_std` is multiplied by
    ``sqrt(N/2) / scale`` (the slots' root-mean-square: the error's variance varies over
    the slots with the secret key). At the defaults: 1.24e-9 for one encryption.

    Args:
        poly_modulus_degree: the ring dimension N.
        scale: the encoding scale Delta (2^global_scale_bits).
        summed: fresh ciphertexts added together.
    """
    degree = poly_modulus_degree
    return coefficient_error_std(degree, summed) * math.sqrt(degree / 2) / scale


@dataclass(frozen=True)
class Flooding:
    """Noise flooding ("smudging") of a CKKS decryption that leaves the client.

    A decryption ``m + e`` handed to someone who holds the ciphertext ``(c0, c1)`` gives
    them ``c0 + c1*s = m + e`` (mod q), linear in the secret key ``s``: Li and Micciancio
    (2021, "On the Security of Homomorphic Encryption on Approximate Numbers",
    EUROCRYPT) recover the key from one such decryption, passively. Their mitigation is
    to add noise that drowns ``e`` before the result is released. Li, Micciancio,
    Schultz and Sorrell (2022, "Securing Approximate Homomorphic Encryption Using
    Differential Privacy", CRYPTO) size it through Renyi differential privacy: for
    ``s`` bits of statistical security (an adversary, however strong, succeeds with
    probability at most 2^-s) against ``tau`` decryption queries, a Gaussian of
    standard deviation

        sigma = sqrt(12 * tau) * 2^(s/2) * t

    added to each coefficient of the decrypted ring element, ``t`` a bound on the
    error's coefficients. This is the formula OpenFHE applies in its
    ``NOISE_FLOODING_DECRYPT`` mode (``src/pke/examples/CKKS_NOISE_FLOODING.md``,
    which also corrects the paper's Corollary 2, whose extra ``sqrt(2N)`` factor does
    not belong in the coefficient embedding). OpenFHE estimates ``t`` by a trial run;
    here ``t`` is :data:`ERROR_BOUND_STDS` times :func:`coefficient_error_std`, from
    the parameters alone (nothing secret), for ``summed`` fresh encryptions.

    Gaussian noise of std ``sigma`` on every coefficient is, on the real parts of the
    slots that TenSEAL returns, independent Gaussian noise of std
    ``sigma * sqrt(N/2) / scale`` on every value (the slots' real and imaginary parts
    are an orthogonal transform of the coefficients, scaled by ``sqrt(N/2)``), so
    :func:`decrypt_flooded` adds that to the decrypted values: the release is the
    real half of what the flooded decryption would give, a post-processing of it.

    Size at the defaults (N = 8192, scale 2^40, t = 8 * 21.3):
    ``std(...) = 3.44e-8 * 2^(s/2) * sqrt(tau * summed)`` per value of the decrypted
    sum: 3.5e-5 * sqrt(tau * summed) at s = 20 (the default), 1.1e-3 * sqrt(tau *
    summed) at s = 30 (OpenFHE's recommended minimum), 3.6e-2 * sqrt(tau * summed) at
    s = 40. The mean divides it by the clients (or the examples) summed. s = 30 puts
    noise as large as a LoRA update (~1e-3 per entry) on the mean of a few clients; s
    = 20 keeps it about 100 times smaller, at a 2^-20 bound on the adversary's success
    (PALISADE's and OpenFHE's threshold-CKKS decryption floods with std 2^20 in ring
    units, about this s at tau = 1 and a few clients). The noise is continuous
    (float64, Box-Muller), not the discrete Gaussian over the ring that the analysis
    assumes; floating-point artefacts are not analysed.

    Attributes:
        bits: the statistical security parameter s; 0 turns flooding off (the raw
            decryption is released, which gives the key away).
        decryptions: tau, the decryptions released under the key (a federation
            releases one per round).
        summed: how many fresh encryptions the decrypted ciphertext adds, at most
            (the bound ``t`` grows with its square root).
    """

    bits: int = 20
    decryptions: int = 1
    summed: int = 1

    def __post_init__(self) -> None:
        for name, least in (("bits", 0), ("decryptions", 1), ("summed", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise HEError(f"Flooding.{name} must be an int >= {least}, got {value!r}")

    def error_bound(self, poly_modulus_degree: int) -> float:
        """``t``, the bound on a coefficient of the decryption error (ring units)."""
        return ERROR_BOUND_STDS * coefficient_error_std(poly_modulus_degree, self.summed)

    def coefficient_std(self, poly_modulus_degree: int) -> float:
        """``sigma``, the flooding noise per coefficient (ring units); 0 when off."""
        if self.bits == 0:
            return 0.0
        bound = self.error_bound(poly_modulus_degree)
        return math.sqrt(12 * self.decryptions) * 2 ** (self.bits / 2) * bound

    def std(self, poly_modulus_degree: int, scale: float) -> float:
        """The flooding noise per decrypted value (value units): what
        :func:`decrypt_flooded` adds to each value; 0 when off."""
        degree = poly_modulus_degree
        return self.coefficient_std(degree) * math.sqrt(degree / 2) / scale


@dataclass
class HECost:
    """Cost of HE operations, summed over the calls it is passed to.

    Attributes:
        encrypt_seconds: wall time of :func:`encrypt_vector` (encoding, encryption,
            serialization), in seconds.
        bytes_up: serialized ciphertext bytes produced by :func:`encrypt_vector`
            (what a client uploads).
        add_seconds: wall time of server-side additions (deserialization included),
            in seconds.
        decrypt_seconds: wall time of :func:`decrypt_vector` (deserialization
            included), in seconds.
    """

    encrypt_seconds: float = 0.0
    bytes_up: int = 0
    add_seconds: float = 0.0
    decrypt_seconds: float = 0.0


def _tenseal() -> Any:
    """Import TenSEAL (module object), or raise HEUnavailable naming the extra."""
    try:
        import tenseal  # untyped: ignore_missing_imports makes it Any for mypy
    except ImportError as exc:
        raise HEUnavailable(MISSING_EXTRA) from exc
    return tenseal


def _load_context(ts: Any, data: bytes) -> Any:
    """Deserialize a TenSEAL context (``tenseal.Context``) from bytes."""
    if not isinstance(data, bytes | bytearray):
        raise HEError(f"a context must be bytes, got {type(data).__name__}")
    try:
        return ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise HEError(f"not a serialized TenSEAL context: {exc}") from exc


def _slots(ctx: Any) -> int:
    """Slots per ciphertext of a loaded context (poly_modulus_degree / 2)."""
    degree = ctx.seal_context().data.key_context_data().parms().poly_modulus_degree()
    return int(degree) // 2


def _load_vectors(ts: Any, ctx: Any, chunks: list[bytes]) -> list[Any]:
    """Deserialize ciphertext chunks (``tenseal.CKKSVector``) under a context."""
    if not isinstance(chunks, list | tuple):
        raise HEError(f"ciphertexts must be a list of bytes, got {type(chunks).__name__}")
    vectors = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, bytes | bytearray):
            raise HEError(f"ciphertext chunk {i} must be bytes, got {type(chunk).__name__}")
        try:
            vectors.append(ts.ckks_vector_from(ctx, bytes(chunk)))
        except Exception as exc:
            raise HEError(
                f"ciphertext chunk {i} is not a CKKS vector of this context: {exc}"
            ) from exc
    return vectors


def _check_shapes(expected: list[int], got: list[Any], what: str) -> None:
    """Raise HEError when ciphertext chunk sizes (values per chunk) differ."""
    sizes = [int(v.size()) for v in got]
    if sizes != expected:
        raise HEError(
            f"{what}: {len(sizes)} chunks of {sum(sizes)} values, expected "
            f"{len(expected)} chunks of {sum(expected)} values (chunk sizes must match)"
        )


def _add(a: list[Any], b: list[Any]) -> list[Any]:
    """Chunk-wise sum of two lists of ``tenseal.CKKSVector`` (out of place)."""
    try:
        return [x + y for x, y in zip(a, b, strict=True)]
    except ValueError as exc:  # scale or parameter mismatch
        raise HEError(f"ciphertexts cannot be added: {exc}") from exc


def make_keys(settings: CkksSettings | None = None) -> HEKeys:
    """Generate a CKKS key pair and serialize the clients' and the server's contexts.

    Relinearization and Galois keys are not kept: additions need neither.

    Args:
        settings: encryption parameters (defaults: :class:`CkksSettings`).

    Returns:
        The secret context (clients) and the public context (server), as bytes.

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEError: SEAL rejected the parameters.
    """
    settings = settings or CkksSettings()
    ts = _tenseal()
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=settings.poly_modulus_degree,
            coeff_mod_bit_sizes=list(settings.coeff_mod_bit_sizes),
        )
    except Exception as exc:
        raise HEError(f"TenSEAL rejected {settings}: {exc}") from exc
    ctx.global_scale = float(2**settings.global_scale_bits)
    keep = {"save_public_key": True, "save_galois_keys": False, "save_relin_keys": False}
    secret = ctx.serialize(save_secret_key=True, **keep)
    public = ctx.serialize(save_secret_key=False, **keep)
    return HEKeys(settings=settings, secret_context=bytes(secret), public_context=bytes(public))


def ciphertext_bytes(chunks: list[bytes]) -> int:
    """Serialized size of an encrypted vector (sum of its chunks), in bytes."""
    return sum(len(c) for c in chunks)


def encrypt_vector(
    values: npt.NDArray[np.floating[Any]],
    context: bytes,
    *,
    cost: HECost | None = None,
) -> list[bytes]:
    """Encrypt a flat float vector, one ciphertext per ``slots`` values.

    Args:
        values: 1-D finite floats (float32 or float64; encoded from float64).
        context: a serialized public or secret context (either can encrypt; both use
            the public key).
        cost: if given, the wall time (s) and the ciphertext bytes are added to it.

    Returns:
        The serialized ciphertexts, ``ceil(len(values) / slots)`` of them, the last
        holding the remainder; empty for an empty vector.

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEError: bad context bytes.
        TypeError: values are not a floating-point array.
        ValueError: values are not 1-D, not finite, or too large for the encoding.
    """
    start = time.perf_counter()
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"values must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"values must be 1-D (flatten first), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite (no NaN or inf)")
    ts = _tenseal()
    ctx = _load_context(ts, context)
    slots = _slots(ctx)
    flat = arr.astype(np.float64, copy=False)
    chunks: list[bytes] = []
    for lo in range(0, flat.size, slots):
        try:
            vector = ts.ckks_vector(ctx, flat[lo : lo + slots].tolist())
        except ValueError as exc:  # "encoded values are too large"
            raise ValueError(f"values[{lo}:{lo + slots}] cannot be encoded: {exc}") from exc
        chunks.append(bytes(vector.serialize()))
    if cost is not None:
        cost.encrypt_seconds += time.perf_counter() - start
        cost.bytes_up += ciphertext_bytes(chunks)
    return chunks


def add_encrypted(
    a: list[bytes],
    b: list[bytes],
    public_context: bytes,
    *,
    cost: HECost | None = None,
) -> list[bytes]:
    """Add two encrypted vectors chunk by chunk, without the secret key (server side).

    Args:
        a: serialized ciphertexts of one vector.
        b: serialized ciphertexts of a vector of the same length, same context.
        public_context: the server's serialized context (a secret one works too).
        cost: if given, the wall time (s) is added to its ``add_seconds``.

    Returns:
        The serialized ciphertexts of ``a + b``.

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEError: bad bytes, different lengths or chunking, or mismatched scales.
    """
    start = time.perf_counter()
    ts = _tenseal()
    ctx = _load_context(ts, public_context)
    va = _load_vectors(ts, ctx, a)
    vb = _load_vectors(ts, ctx, b)
    _check_shapes([int(v.size()) for v in va], vb, "add_encrypted")
    out = [bytes(v.serialize()) for v in _add(va, vb)]
    if cost is not None:
        cost.add_seconds += time.perf_counter() - start
    return out


class EncryptedSum:
    """Server-side running sum of the clients' encrypted vectors.

    The first client fixes the length and chunking; a client whose ciphertexts do not
    match is refused (HEError) and leaves the sum unchanged.

    Args:
        public_context: the server's serialized context (no secret key needed).

    Attributes:
        cost: ``bytes_up`` (ciphertext bytes received from all clients) and
            ``add_seconds`` (deserialization and addition, seconds) so far.
        bytes_per_client: ciphertext bytes received from each client, in order.
    """

    def __init__(self, public_context: bytes) -> None:
        self._ts = _tenseal()
        self._ctx = _load_context(self._ts, public_context)
        self._sum: list[Any] | None = None
        self._sizes: list[int] = []
        self.cost = HECost()
        self.bytes_per_client: list[int] = []

    @property
    def clients(self) -> int:
        """Clients added so far."""
        return len(self.bytes_per_client)

    @property
    def length(self) -> int:
        """Values in the summed vector (0 before the first client)."""
        return sum(self._sizes)

    def add(self, chunks: list[bytes]) -> None:
        """Add one client's encrypted vector.

        Args:
            chunks: the client's serialized ciphertexts (:func:`encrypt_vector`).

        Raises:
            HEError: bad bytes, or a length or chunking other than the first client's.
        """
        start = time.perf_counter()
        vectors = _load_vectors(self._ts, self._ctx, chunks)
        if self._sum is None:
            self._sizes = [int(v.size()) for v in vectors]
            new_sum = vectors
        else:
            _check_shapes(self._sizes, vectors, f"client {self.clients}")
            new_sum = _add(self._sum, vectors)
        self._sum = new_sum
        self.bytes_per_client.append(ciphertext_bytes(chunks))
        self.cost.bytes_up += self.bytes_per_client[-1]
        self.cost.add_seconds += time.perf_counter() - start

    def result(self) -> list[bytes]:
        """The serialized ciphertexts of the sum, for the clients to decrypt.

        Raises:
            HEError: no client was added.
        """
        if self._sum is None:
            raise HEError("EncryptedSum.result(): no client was added")
        return [bytes(v.serialize()) for v in self._sum]


def context_parameters(context: bytes) -> tuple[int, float]:
    """The ring dimension and the encoding scale of a serialized context (public or
    secret).

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEError: bad context bytes.
    """
    ts = _tenseal()
    ctx = _load_context(ts, context)
    return 2 * _slots(ctx), float(ctx.global_scale)


def decrypt_vector(
    chunks: list[bytes],
    length: int,
    secret_context: bytes,
    *,
    cost: HECost | None = None,
) -> npt.NDArray[np.float64]:
    """Decrypt an encrypted vector (client side: needs the secret key), without noise.

    The result carries the ciphertext's error, from which whoever holds the ciphertext
    can recover the secret key: use :func:`decrypt_flooded` for anything sent on.

    Args:
        chunks: serialized ciphertexts (:func:`encrypt_vector`, or a sum of them).
        length: the number of values they hold (checked).
        secret_context: the clients' serialized context with the secret key.
        cost: if given, the wall time (s) is added to its ``decrypt_seconds``.

    Returns:
        The values, float64, shape ``(length,)``; approximate (see the module
        docstring for the error).

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEKeyError: the context holds no secret key (e.g. the server's public one).
        HEError: bad bytes, or the ciphertexts do not hold ``length`` values.
    """
    start = time.perf_counter()
    ts = _tenseal()
    ctx = _load_context(ts, secret_context)
    out = _decrypt(ts, ctx, chunks, length)
    if cost is not None:
        cost.decrypt_seconds += time.perf_counter() - start
    return out


def decrypt_flooded(
    chunks: list[bytes],
    length: int,
    secret_context: bytes,
    flooding: Flooding,
    *,
    rng: Randomness | None = None,
    cost: HECost | None = None,
) -> tuple[npt.NDArray[np.float64], float]:
    """Decrypt an encrypted sum and flood it with noise, for release to the server.

    Each value gets independent Gaussian noise of std ``flooding.std(N, scale)``
    (:class:`Flooding`: its size and its source), drawn from ``rng``, by default the
    operating system's CSPRNG: never from a seed the server knows.

    Args:
        chunks: serialized ciphertexts of a sum of at most ``flooding.summed`` fresh
            encryptions at the context's scale.
        length: the number of values they hold (checked).
        secret_context: the clients' serialized context with the secret key.
        flooding: the noise's parameters.
        rng: where the noise's bytes come from (:class:`SystemRandomness` if None; a
            seeded one only to reproduce a test).
        cost: if given, the wall time (s) is added to its ``decrypt_seconds``.

    Returns:
        The flooded values (float64, shape ``(length,)``) and the noise's standard
        deviation per value (value units).

    Raises:
        HEUnavailable: TenSEAL is not installed.
        HEKeyError: the context holds no secret key.
        HEError: bad bytes, the ciphertexts do not hold ``length`` values, or one is
            not at the context's scale and first level, or has more than two parts (not
            a sum of fresh encryptions, which the flooding's error bound assumes).
    """
    start = time.perf_counter()
    ts = _tenseal()
    ctx = _load_context(ts, secret_context)
    scale = float(ctx.global_scale)
    out = _decrypt(ts, ctx, chunks, length, fresh=True)
    std = flooding.std(2 * _slots(ctx), scale)
    if std > 0:
        out += std * standard_normal(length, rng or SystemRandomness())
    if cost is not None:
        cost.decrypt_seconds += time.perf_counter() - start
    return out, std


def standard_normal(n: int, rng: Randomness) -> npt.NDArray[np.float64]:
    """``n`` independent standard normal draws made from ``rng``'s bytes.

    Box-Muller on pairs of 53-bit uniforms (``u1`` in (0, 1], ``u2`` in [0, 1)): the
    draws are as unpredictable as the bytes (the OS CSPRNG's, from
    :class:`SystemRandomness`); their tails stop at ``sqrt(106 ln 2)`` ~ 8.6. The first
    ``m`` of ``n`` draws are the ``m`` draws of the same stream.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"cannot draw {n} values")
    pairs = (n + 1) // 2
    words = np.frombuffer(rng.random_bytes(16 * pairs), dtype="<u8").reshape(pairs, 2)
    mantissas = (words >> np.uint64(11)).astype(np.float64)
    u1 = (mantissas[:, 0] + 1.0) * 2.0**-53
    angle = (2 * math.pi * 2.0**-53) * mantissas[:, 1]
    radius = np.sqrt(-2.0 * np.log(u1))
    pair = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return np.asarray(pair.reshape(-1)[:n], dtype=np.float64)


def _decrypt(
    ts: Any, ctx: Any, chunks: list[bytes], length: int, *, fresh: bool = False
) -> npt.NDArray[np.float64]:
    """Decrypt ciphertext chunks under a loaded secret context (``length`` checked; with
    ``fresh``, that each chunk is as additions of fresh encryptions leave it)."""
    if not ctx.has_secret_key():
        raise HEKeyError(
            "this context holds no secret key: decryption needs the clients' secret "
            "context (HEKeys.secret_context), the server's public context cannot decrypt"
        )
    vectors = _load_vectors(ts, ctx, chunks)
    total = sum(int(v.size()) for v in vectors)
    if total != length:
        raise HEError(f"the ciphertexts hold {total} values, expected length {length}")
    out = np.empty(length, dtype=np.float64)
    lo = 0
    for i, v in enumerate(vectors):
        if fresh:
            _check_fresh(ctx, v, i)
        try:
            part = np.asarray(v.decrypt(), dtype=np.float64)
        except ValueError as exc:
            raise HEKeyError(f"TenSEAL could not decrypt: {exc}") from exc
        out[lo : lo + part.size] = part
        lo += part.size
    return out


def _check_fresh(ctx: Any, vector: Any, index: int) -> None:
    """Raise HEError unless a loaded ``tenseal.CKKSVector`` is at the context's scale and
    first data level, in two parts: what adding fresh encryptions leaves (a product or a
    rescaled ciphertext carries more error than :class:`Flooding` bounds)."""
    (ciphertext,) = vector.ciphertext()
    scale, want = float(ciphertext.scale), float(ctx.global_scale)
    level = ciphertext.parms_id() == ctx.seal_context().data.first_parms_id()
    if scale != want or not level or ciphertext.size() != 2:
        raise HEError(
            f"ciphertext chunk {index} (scale 2^{math.log2(scale):.1f}, "
            f"{'first' if level else 'a lower'} level, {ciphertext.size()} parts) is not a "
            f"sum of fresh encryptions (scale 2^{math.log2(want):.1f}, first level, 2 parts)"
        )
