"""t-of-n Shamir secret sharing of short secrets over the prime field p = 2^521 - 1.

A secret ``s`` (as an integer) is the constant term of a random polynomial ``f`` of
degree ``t - 1``; share ``i`` is ``f(i)``. Any ``t`` shares give ``f(0) = s`` by Lagrange
interpolation; any ``t - 1`` shares are uniformly distributed whatever the secret
(perfect secrecy), because for each secret exactly one polynomial passes through them.
Shares are 66-byte big-endian field elements keyed by their positive integer ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedllm.secure.randomness import Randomness

PRIME = (1 << 521) - 1
"""The Mersenne prime 2^521 - 1: every 32-byte secret is a field element."""
SHARE_BYTES = 66
"""One field element, big-endian."""
SECRET_BYTES = 32


def random_element(rng: Randomness) -> int:
    """A uniform element of the field (rejection sampling of 521-bit draws)."""
    while True:
        value = int.from_bytes(rng.random_bytes(SHARE_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def split(secret: bytes, threshold: int, ids: Sequence[int], rng: Randomness) -> dict[int, bytes]:
    """Shares of ``secret`` for ``ids``; any ``threshold`` of them reconstruct it.

    Args:
        secret: 32 bytes.
        threshold: t, 1 <= t <= len(ids).
        ids: distinct share ids, 1 <= id < p.
        rng: the polynomial's coefficients (seeded in simulation, a CSPRNG in
            deployment).

    Returns:
        id -> 66-byte share.

    Raises:
        ValueError: a malformed secret, threshold or id list.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, not {len(secret)}")
    _check_ids(ids)
    if not 1 <= threshold <= len(ids):
        raise ValueError(f"threshold {threshold} must be in 1 .. {len(ids)} (the share count)")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [random_element(rng) for _ in range(threshold - 1)]
    return {i: _encode(_evaluate(coefficients, i)) for i in ids}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the ``threshold`` lowest ids used).

    Args:
        shares: id -> 66-byte share, from one :func:`split`.
        threshold: t of that split.

    Returns:
        The 32-byte secret.

    Raises:
        ValueError: fewer than ``threshold`` shares, a malformed share, or shares that
            do not interpolate to a 32-byte secret (they are not from one split).
    """
    _check_threshold(shares, threshold)
    lowest = sorted(shares)[:threshold]
    return reconstruct({i: shares[i] for i in lowest}, threshold)


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from all of ``shares``, checked against every one of them.

    The polynomial through the ``threshold`` lowest ids must pass through every other
    share too, so with more than ``threshold`` shares one that was altered is detected.
    With exactly ``threshold`` shares nothing can be cross-checked: a garbage share
    still gives, but for a chance of 2^-265, a constant term too large for a 32-byte
    secret, while one crafted to shift the secret by a chosen amount goes unnoticed.

    Args:
        shares: id -> 66-byte share, from one :func:`split`.
        threshold: t of that split.

    Returns:
        The 32-byte secret.

    Raises:
        ValueError: fewer than ``threshold`` shares, a malformed share (naming its id),
            a share off the polynomial of the others (naming its id), or shares that do
            not interpolate to a 32-byte secret.
    """
    _check_threshold(shares, threshold)
    ids = sorted(shares)
    _check_ids(ids)
    values: dict[int, int] = {}
    for i in ids:
        try:
            values[i] = _decode(shares[i])
        except ValueError as error:
            raise ValueError(f"share {i}: {error}") from error
    base = ids[:threshold]
    ys = [values[i] for i in base]
    weights = _weights(base)
    for i in ids[threshold:]:
        if _lagrange(base, ys, weights, i) != values[i]:
            raise ValueError(f"share {i} does not lie on the polynomial through shares {base}")
    value = _lagrange(base, ys, weights, 0)
    if value >> (8 * SECRET_BYTES):
        raise ValueError("the shares do not interpolate to a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def interpolate(points: Mapping[int, int], x: int) -> int:
    """The value at ``x`` of the polynomial of degree < len(points) through ``points``.

    Args:
        points: distinct x -> y, field elements.
        x: where to evaluate.
    """
    total = 0
    for xi, yi in points.items():
        numerator, denominator = 1, 1
        for xj in points:
            if xj != xi:
                numerator = numerator * (x - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def share_value(share: bytes) -> int:
    """A share as its field element."""
    return _decode(share)


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def _encode(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def _decode(share: bytes) -> int:
    if len(share) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, not {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise ValueError("a share is not a field element")
    return value


def _check_threshold(shares: Mapping[int, bytes], threshold: int) -> None:
    if threshold < 1:
        raise ValueError(f"threshold {threshold} must be >= 1")
    if len(shares) < threshold:
        raise ValueError(
            f"{len(shares)} shares cannot reconstruct a secret of threshold {threshold}"
        )


def _weights(xs: Sequence[int]) -> list[int]:
    """The barycentric weights ``1 / prod_{j != i} (x_i - x_j)`` of distinct ``xs``, with
    one modular inversion for all of them (Montgomery's trick)."""
    denominators = []
    for xi in xs:
        d = 1
        for xj in xs:
            if xj != xi:
                d = d * (xi - xj) % PRIME
        denominators.append(d)
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for k in range(len(xs) - 1, -1, -1):
        weights[k] = inverse * prefix[k] % PRIME
        inverse = inverse * denominators[k] % PRIME
    return weights


def _lagrange(xs: Sequence[int], ys: Sequence[int], weights: Sequence[int], x: int) -> int:
    """The value at ``x`` of the polynomial through ``(xs, ys)``: ``sum_i y_i w_i
    prod_{j != i} (x - x_j)``, the products from prefixes and suffixes (no inversion)."""
    diffs = [(x - xj) % PRIME for xj in xs]
    suffix = [1] * (len(xs) + 1)
    for k in range(len(xs) - 1, -1, -1):
        suffix[k] = suffix[k + 1] * diffs[k] % PRIME
    total, prefix = 0, 1
    for k, (y, w) in enumerate(zip(ys, weights, strict=True)):
        total = (total + y * w % PRIME * (prefix * suffix[k + 1] % PRIME)) % PRIME
        prefix = prefix * diffs[k] % PRIME
    return total


def _check_ids(ids: Sequence[int]) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"share ids must be distinct, got {list(ids)}")
    for i in ids:
        if not 0 < i < PRIME:
            raise ValueError(f"share ids must be positive field elements, got {i}")
