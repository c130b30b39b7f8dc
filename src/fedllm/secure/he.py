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
decrypted aggregate should not be handed back to the server together with its
ciphertext without noise: CKKS decryptions leak information about the secret key
(Li and Micciancio, 2021).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CkksSettings",
    "EncryptedSum",
    "HECost",
    "HEError",
    "HEKeyError",
    "HEKeys",
    "HEUnavailable",
    "add_encrypted",
    "ciphertext_bytes",
    "decrypt_vector",
    "encrypt_vector",
    "make_keys",
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


def decrypt_vector(
    chunks: list[bytes],
    length: int,
    secret_context: bytes,
    *,
    cost: HECost | None = None,
) -> npt.NDArray[np.float64]:
    """Decrypt an encrypted vector (client side: needs the secret key).

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
    for v in vectors:
        try:
            part = np.asarray(v.decrypt(), dtype=np.float64)
        except ValueError as exc:
            raise HEKeyError(f"TenSEAL could not decrypt: {exc}") from exc
        out[lo : lo + part.size] = part
        lo += part.size
    if cost is not None:
        cost.decrypt_seconds += time.perf_counter() - start
    return out
