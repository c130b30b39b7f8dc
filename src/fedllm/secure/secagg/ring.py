"""Fixed-point quantisation of float vectors into the ring Z_{2^bits}.

A client's value ``x`` is clipped to ``[-r, r]`` and mapped affinely onto the integers
``0 .. L - 1`` (``L`` the levels per client), rounding stochastically so the integer is
an unbiased estimate. ``L = floor((2^bits - 1) / clients)`` makes the sum of any
``clients`` quantised values at most ``2^bits - 1``: the sum taken mod ``2^bits`` is
the true sum, and the affine map can be inverted for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MIN_BITS = 8
MAX_BITS = 62
"""The ring's width: 62 bits keeps every ring element and the sum of two in int64."""


@dataclass(frozen=True)
class RingSpec:
    """The ring and the fixed-point grid of one secure-aggregation round.

    Attributes:
        bits: the ring is Z_{2^bits}, 8 <= bits <= 62.
        clip_range: r > 0; each entry is clipped to [-r, r] (the values' unit).
        clients: the most clients whose values are ever summed (the cohort size).

    Raises:
        ValueError: a setting is out of range, or ``clients`` values could overflow the
            ring (fewer than 2 levels per client); the message names the setting and what
            would be valid.
    """

    bits: int
    clip_range: float
    clients: int

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(
                f"secagg.bits = {self.bits} is out of range; use {MIN_BITS} <= bits <= {MAX_BITS}"
            )
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"secagg.clip_range = {self.clip_range} must be a finite number > 0")
        if self.clients < 1:
            raise ValueError(f"secagg.clients = {self.clients} must be >= 1")
        if self.levels < 2:
            need = min_bits(self.clients)
            fix = (
                f"use bits >= {need}"
                if need <= MAX_BITS
                else f"use at most {((1 << MAX_BITS) - 1) // 2} clients"
            )
            level_word = "level" if self.levels == 1 else "levels"
            raise ValueError(
                f"secagg.bits = {self.bits} leaves {self.levels} {level_word} per client "
                f"for {self.clients} clients; {fix}"
            )

    @property
    def modulus(self) -> int:
        """2^bits."""
        return 1 << self.bits

    @property
    def mask(self) -> int:
        """2^bits - 1: ``v & mask`` is ``v mod 2^bits`` for int64 ``v`` (two's complement)."""
        return (1 << self.bits) - 1

    @property
    def levels(self) -> int:
        """L = floor((2^bits - 1) / clients): the integers 0 .. L - 1 one client may send."""
        return ((1 << self.bits) - 1) // self.clients

    @property
    def step(self) -> float:
        """The grid's spacing in value units: 2 r / (L - 1)."""
        return 2.0 * self.clip_range / (self.levels - 1)


def min_bits(clients: int) -> int:
    """The fewest ring bits that give ``clients`` clients at least 2 levels each."""
    return max(MIN_BITS, (2 * clients).bit_length())


def max_quantisation_error(spec: RingSpec) -> float:
    """The largest error of one quantised entry, in value units.

    Stochastic rounding moves a value inside [-r, r] by less than one grid step
    ``2 r / (L - 1)``; a sum of ``count`` entries is off by less than ``count`` steps.
    Clipping adds ``|x| - r`` for entries outside the range; that is not counted here.
    """
    return spec.step


def quantise(
    x: NDArray[np.floating], spec: RingSpec, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Clip ``x`` to [-r, r] and map it to integers in [0, L - 1], stochastically rounded.

    ``E[q] = (clip(x) + r) / step`` exactly (up to float64 resolution, which for
    bits > 53 is coarser than the grid).

    Args:
        x: float values, any shape.
        spec: the ring.
        rng: the rounding's randomness (seeded for reproducibility).

    Returns:
        int64 array of x's shape, each entry in [0, L - 1].

    Raises:
        ValueError: ``x`` holds a NaN or an infinity.
    """
    values = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot quantise NaN or infinite values")
    top = spec.levels - 1
    scaled = (np.clip(values, -spec.clip_range, spec.clip_range) + spec.clip_range) / spec.step
    low = np.floor(scaled)
    up = rng.random(size=scaled.shape) < (scaled - low)
    q = low.astype(np.int64) + up
    return np.clip(q, 0, top).astype(np.int64, copy=False)


def dequantise_sum(total: NDArray[np.integer], count: int, spec: RingSpec) -> NDArray[np.float64]:
    """The float sum of ``count`` values from the sum of their quantisations.

    Args:
        total: the ring sum (int, entries in [0, count (L - 1)]), e.g. the result of
            secure aggregation.
        count: how many clients' values it sums, 1 <= count <= clients.
        spec: the ring they were quantised into.

    Returns:
        float64 array: ``total * step - count * r``, in value units.

    Raises:
        ValueError: ``count`` is out of range, or an entry of ``total`` could not be a
            sum of ``count`` quantised values (the wrong count, or an unmasking bug).
    """
    if not 1 <= count <= spec.clients:
        raise ValueError(f"count = {count} must be in 1 .. {spec.clients} (secagg.clients)")
    sums = np.asarray(total)
    if not np.issubdtype(sums.dtype, np.integer):
        raise ValueError(f"the ring sum must be integers, not {sums.dtype}")
    if sums.size and (int(sums.min()) < 0 or int(sums.max()) > count * (spec.levels - 1)):
        raise ValueError(
            f"ring sum entries must lie in [0, {count * (spec.levels - 1)}] for {count} "
            f"clients; got [{int(sums.min())}, {int(sums.max())}]"
        )
    return sums.astype(np.float64) * spec.step - count * spec.clip_range
