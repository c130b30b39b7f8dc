"""Canary exposure (Carlini et al. 2019, "The Secret Sharer"): how far up a canary's
secret ranks, by model loss, among the secrets it could have been.

``exposure = log2(|space|) - log2(rank)``: 0 when the true secret is no likelier than
a typical one, ``log2(|space|)`` when it is the likeliest of all. With the whole space
enumerated the rank is exact; with a sample of candidates it is estimated from the
share of candidates scoring below the canary, and extrapolated from a skew-normal fit
of the candidates' losses (Carlini et al.'s section 4.3).

A run's canaries and controls have distinct secrets (drawn without repeats), so a
canary could not have been any of its siblings' secrets: they are left out of its
space and of its candidates, exact or sampled. Ranked among them, a canary would lose
up to ``log2(1 + siblings)`` bits to the other inserted canaries (same template, same
prefix), which the model has also learnt.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Exposure:
    """A canary's rank and exposure among candidate secrets.

    Attributes:
        space: secrets the canary could have been (``10^digits`` but its siblings'
            secrets: :func:`secret_space`).
        candidates: secrets scored besides the canary's.
        exact: the whole space was scored (the rank is exact, not estimated).
        rank: 1 = the likeliest; ties count one half; estimated when not ``exact``.
        exposure: ``log2(space) - log2(rank)``.
        max_exposure: ``log2(space)``.
        extrapolated: ``-log2 P(loss <= the canary's)`` under a skew-normal fitted to the
            candidates' losses (capped at ``max_exposure``); None without scipy or when the
            fit fails.
        loss: the canary's loss (nats, summed over its scored tokens).
        median_candidate_loss: the candidates' median loss.
    """

    space: int
    candidates: int
    exact: bool
    rank: float
    exposure: float
    max_exposure: float
    extrapolated: float | None
    loss: float
    median_candidate_loss: float

    def to_json(self) -> dict[str, object]:
        return {
            "space": self.space,
            "candidates": self.candidates,
            "exact": self.exact,
            "rank": self.rank,
            "exposure": self.exposure,
            "max_exposure": self.max_exposure,
            "extrapolated_exposure": self.extrapolated,
            "loss": self.loss,
            "median_candidate_loss": self.median_candidate_loss,
        }


def secret_space(secret: str, siblings: Collection[str] = ()) -> int:
    """The secrets a canary could have been: every ``len(secret)``-digit string but its
    siblings' (the run's other canaries' and controls' secrets, distinct from its own)."""
    others = {s for s in siblings if s != secret and len(s) == len(secret)}
    space: int = 10 ** len(secret)
    return space - len(others)


def candidate_secrets(
    secret: str, candidates: int, rng: np.random.Generator, siblings: Collection[str] = ()
) -> tuple[list[str], bool]:
    """The secrets a canary is ranked among, its own and its siblings' excluded, and
    whether they are the whole space (:func:`secret_space`).

    Every other ``len(secret)``-digit string but the siblings' when there are at most
    ``candidates`` of them, else ``candidates`` distinct ones drawn uniformly from
    ``rng`` (a draw equal to a sibling's secret is skipped, like a repeat).

    Args:
        secret: the canary's secret.
        candidates: most secrets to score besides it.
        rng: draws the sample (when the space is larger than ``candidates``).
        siblings: the run's other canaries' and controls' secrets.
    """
    digits = len(secret)
    space = 10**digits
    excluded = {int(s) for s in {secret, *siblings} if len(s) == digits}
    if secret_space(secret, siblings) - 1 <= candidates:
        return [f"{i:0{digits}d}" for i in range(space) if i not in excluded], True
    drawn: list[int] = []
    seen = set(excluded)
    while len(drawn) < candidates:
        for value in rng.integers(0, space, size=candidates - len(drawn), dtype=np.int64):
            v = int(value)
            if v not in seen:
                seen.add(v)
                drawn.append(v)
    return [f"{v:0{digits}d}" for v in drawn], False


def rank_among(loss: float, others: Sequence[float] | np.ndarray) -> float:
    """1 + the candidates with a lower loss + half of those with the same loss."""
    values = np.asarray(others, dtype=np.float64)
    return 1.0 + float((values < loss).sum()) + 0.5 * float((values == loss).sum())


def exposure_of(
    loss: float, others: Sequence[float] | np.ndarray, space: int, exact: bool
) -> Exposure:
    """The canary's :class:`Exposure` from its loss and its candidates' losses.

    Args:
        loss: the canary's loss (lower: likelier).
        others: the losses of the other secrets scored.
        space: how many secrets the canary could have been, its own included
            (:func:`secret_space`).
        exact: ``others`` are every other secret of the space.

    Raises:
        ValueError: no candidates, or more than the space holds.
    """
    values = np.asarray(others, dtype=np.float64)
    if values.size == 0 or values.size > space - 1:
        raise ValueError(f"{values.size} candidates for a space of {space}: need 1 to {space - 1}")
    if exact and values.size != space - 1:
        raise ValueError(f"an exact rank needs all {space - 1} other secrets, got {values.size}")
    max_exposure = math.log2(space)
    if exact:
        rank = rank_among(loss, values)
    else:  # the share below the canary, scaled to the whole space
        below = (rank_among(loss, values) - 1.0) / values.size
        rank = 1.0 + below * (space - 1)
    return Exposure(
        space=space,
        candidates=int(values.size),
        exact=exact,
        rank=rank,
        exposure=max_exposure - math.log2(rank),
        max_exposure=max_exposure,
        extrapolated=extrapolated_exposure(loss, values, max_exposure),
        loss=float(loss),
        median_candidate_loss=float(np.median(values)),
    )


def extrapolated_exposure(loss: float, others: np.ndarray, cap: float) -> float | None:
    """``-log2`` of the fitted skew-normal's CDF at ``loss``, in ``[0, cap]``; None without
    scipy, with fewer than 10 candidates, or when the fit fails."""
    if others.size < 10 or float(np.std(others)) == 0.0:
        return None
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is optional
        return None
    try:
        params = stats.skewnorm.fit(others)
        log_cdf = float(stats.skewnorm.logcdf(loss, *params))
    except (ValueError, RuntimeError, FloatingPointError):
        return None
    if not math.isfinite(log_cdf):
        return cap if log_cdf == -math.inf else None
    return min(cap, max(0.0, -log_cdf / math.log(2)))
