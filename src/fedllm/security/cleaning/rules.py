"""The cleaning rules, each a pure function of a client's own examples (no torch).

- :func:`matching`: texts containing a trigger pattern (regular expressions) or a
  listed word (whole words, any case);
- :func:`near_duplicates`: examples whose token shingles overlap an earlier kept
  example's by a Jaccard similarity at or above a threshold (the first is kept);
- :func:`loss_outliers`: examples whose loss under the received model is too high,
  by an absolute bound, a quantile of the client's losses, or a z-score among them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

if TYPE_CHECKING:
    from fedllm.security.cleaning import LossRule

BLOCK_ROWS = 512
"""Examples whose similarities to all others are held at once (a dense ``[512, n]`` block)."""


def word_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    """One regular expression matching any of ``words`` as a whole word (not inside a
    longer word), in any case; None for no words."""
    cleaned = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    either = "|".join(re.escape(w) for w in cleaned)
    return re.compile(rf"(?<!\w)(?:{either})(?!\w)", re.IGNORECASE)


def matching(texts: Sequence[str], patterns: Sequence[re.Pattern[str]]) -> list[int]:
    """Indices of the texts in which any of ``patterns`` is found (``re.search``)."""
    return [i for i, text in enumerate(texts) if any(p.search(text) for p in patterns)]


def shingles(ids: Sequence[int], size: int) -> set[tuple[int, ...]]:
    """The distinct runs of ``size`` consecutive tokens of ``ids`` (a shorter sequence
    is one shingle of its own; an empty one has none)."""
    if len(ids) <= size:
        return {tuple(ids)} if ids else set()
    return {tuple(ids[i : i + size]) for i in range(len(ids) - size + 1)}


def near_duplicates(
    sequences: Sequence[Sequence[int]], size: int, threshold: float
) -> dict[int, int]:
    """Which sequences are near-duplicates of an earlier kept one.

    Walking the sequences in order, ``i`` is removed when some earlier sequence ``j``
    that was kept has ``|S_i & S_j| / |S_i | S_j| >= threshold``, ``S`` the sets of
    :func:`shingles` of ``size`` tokens (exact Jaccard similarity, no sketch). Two
    empty sequences are not duplicates.

    Returns:
        removed index -> the first kept index it duplicates.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"a Jaccard threshold must be in (0, 1], got {threshold}")
    columns: dict[tuple[int, ...], int] = {}
    rows, cols = [], []
    for row, ids in enumerate(sequences):
        for shingle in shingles(ids, size):
            rows.append(row)
            cols.append(columns.setdefault(shingle, len(columns)))
    n = len(sequences)
    incidence = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, max(1, len(columns)))
    )
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    similar: list[list[int]] = [[] for _ in range(n)]  # i -> earlier j with J >= threshold
    for lo in range(0, n, BLOCK_ROWS):
        common = (incidence[lo : lo + BLOCK_ROWS] @ incidence.T).toarray()
        union = sizes[lo : lo + BLOCK_ROWS, None] + sizes[None, :] - common
        with np.errstate(invalid="ignore", divide="ignore"):
            jaccard = np.where(union > 0, common / np.maximum(union, 1), 0.0)
        for offset, row in enumerate(jaccard):
            i = lo + offset
            similar[i] = np.flatnonzero(row[:i] >= threshold).tolist()
    removed: dict[int, int] = {}
    for i in range(n):
        kept = [j for j in similar[i] if j not in removed]
        if kept:
            removed[i] = kept[0]
    return removed


def loss_cut(losses: np.ndarray, rule: LossRule, threshold: float) -> float:
    """The loss above which an example is removed (nats per token): ``threshold`` itself
    (``absolute``), the ``threshold``-quantile of the finite losses (``quantile``, numpy's
    linear interpolation), or their mean plus ``threshold`` population standard
    deviations (``zscore``); ``inf`` for ``none`` or no finite loss."""
    finite = losses[np.isfinite(losses)]
    if rule == "none" or len(finite) == 0:
        return float("inf")
    if rule == "absolute":
        return threshold
    if rule == "quantile":
        return float(np.quantile(finite, threshold))
    return float(finite.mean() + threshold * finite.std())


def loss_outliers(losses: np.ndarray, rule: LossRule, threshold: float) -> list[int]:
    """Indices whose loss is above :func:`loss_cut` (NaN: nothing scored, kept)."""
    cut = loss_cut(losses, rule, threshold)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(losses > cut).tolist()
