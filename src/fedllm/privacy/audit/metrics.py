"""Attack quality from scores: ROC AUC and the true-positive rate at a low false-positive
rate. A higher score means "member"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOW_FPR = 0.01
"""The false-positive rate the TPR is reported at (1%)."""


@dataclass(frozen=True)
class AttackResult:
    """How well one score separates members from non-members.

    Attributes:
        auc: ROC AUC (0.5: chance; ties count one half).
        auc_interval: its 95% confidence interval (:func:`auc_interval`).
        tpr_at_low_fpr: the largest TPR of a threshold whose FPR is at most ``fpr``;
            None when the non-members are too few to resolve that FPR (fewer than
            ``1 / fpr``: "1%" would mean no false positive at all).
        fpr: that FPR bound.
        members: member scores used.
        nonmembers: non-member scores used.
    """

    auc: float
    auc_interval: tuple[float, float]
    tpr_at_low_fpr: float | None
    fpr: float
    members: int
    nonmembers: int

    def to_json(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "auc_interval": list(self.auc_interval),
            "tpr_at_low_fpr": self.tpr_at_low_fpr,
            "fpr": self.fpr,
            "members": self.members,
            "nonmembers": self.nonmembers,
        }


def auc_interval(value: float, members: int, nonmembers: int) -> tuple[float, float]:
    """A 95% confidence interval of an AUC from ``members`` and ``nonmembers`` scores:
    Hanley and McNeil's (1982) standard error, value +- 1.96 SE, clipped to [0, 1].

    SE^2 = (A(1 - A) + (m - 1)(Q1 - A^2) + (n - 1)(Q2 - A^2)) / (m n), with
    Q1 = A / (2 - A) and Q2 = 2 A^2 / (1 + A).
    """
    a, m, n = value, members, nonmembers
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)
    half = 1.96 * math.sqrt(max(variance, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def resolvable(nonmembers: int, fpr: float) -> bool:
    """Whether ``nonmembers`` scores can tell an FPR of ``fpr`` from zero."""
    return fpr > 0 and nonmembers * fpr >= 1 - 1e-9


def auc(members: Sequence[float] | np.ndarray, nonmembers: Sequence[float] | np.ndarray) -> float:
    """The probability that a random member outscores a random non-member, ties counted
    one half (the Mann-Whitney U statistic over the product of the sizes).

    Computed from average ranks of the pooled scores, O(n log n).

    Raises:
        ValueError: either side is empty, or a score is not finite.
    """
    pos, neg = _scores(members, "members"), _scores(nonmembers, "nonmembers")
    pooled = np.concatenate([pos, neg])
    ranks = average_ranks(pooled)
    rank_sum = float(ranks[: len(pos)].sum())
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def tpr_at_fpr(
    members: Sequence[float] | np.ndarray,
    nonmembers: Sequence[float] | np.ndarray,
    fpr: float = LOW_FPR,
) -> float:
    """The largest share of members flagged by a threshold ``score >= t`` that flags at
    most ``fpr`` of the non-members.

    With fewer than ``1 / fpr`` non-members, only a threshold above every non-member
    qualifies (zero false positives): the figure is then coarse.

    Raises:
        ValueError: either side is empty, a score is not finite, or ``fpr`` is outside [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr = {fpr}: must be between 0 and 1")
    pos, neg = _scores(members, "members"), _scores(nonmembers, "nonmembers")
    allowed = int(np.floor(fpr * len(neg) + 1e-9))  # false positives a threshold may make
    if allowed >= len(neg):
        return 1.0
    # every threshold just above the (allowed+1)-th highest non-member flags at most
    # `allowed` of them; one at or below it flags more
    bar = np.sort(neg)[::-1][allowed]
    return float((pos > bar).mean())


def attack(
    members: Sequence[float] | np.ndarray,
    nonmembers: Sequence[float] | np.ndarray,
    fpr: float = LOW_FPR,
) -> AttackResult:
    """:func:`auc` with its interval, and :func:`tpr_at_fpr` where the non-members can
    resolve ``fpr`` (else None) of one attack's scores."""
    value = auc(members, nonmembers)
    tpr = tpr_at_fpr(members, nonmembers, fpr) if resolvable(len(nonmembers), fpr) else None
    return AttackResult(
        auc=value,
        auc_interval=auc_interval(value, len(members), len(nonmembers)),
        tpr_at_low_fpr=tpr,
        fpr=fpr,
        members=len(members),
        nonmembers=len(nonmembers),
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) -> mean, 1-based
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.size == 0:
        raise ValueError(f"no {what} scores: an attack needs both members and non-members")
    if not np.isfinite(out).all():
        raise ValueError(f"{what} scores hold a non-finite value")
    return out
