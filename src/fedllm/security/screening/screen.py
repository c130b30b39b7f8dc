"""The screen around a round's aggregator: features per client, robust z-scores across
the round, flags; and how the flags compare with the malicious clients of a simulated
attack."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from fedllm.pipeline.stage import Aggregator, BatchAggregator, BatchResult, WeightedUpdate
from fedllm.security.defenses.round_rule import RoundRule
from fedllm.security.screening.features import update_features
from fedllm.security.screening.settings import ScreeningSettings
from fedllm.types import ClientId, Params

MAD_SCALE = 1.4826
"""``1 / Phi^-1(3/4)``: the MAD times this estimates a normal spread's standard deviation
(Iglewicz and Hoaglin's modified z-score: ``0.6745 (x - median) / MAD``)."""

COUNTS = ("tp", "fp", "fn", "tn")


def robust_z(values: Sequence[float]) -> list[float]:
    """``(x - median) / (1.4826 MAD)`` for each value. A spread of 0 (more than half of
    the values equal) counts as ``1e-9 |median|`` (or the smallest positive float), so
    a value off the common one is far out and the common ones are at 0."""
    x = np.asarray(values, dtype=np.float64)
    median = float(np.median(x))
    spread = MAD_SCALE * float(np.median(np.abs(x - median)))
    scale = max(spread, 1e-9 * abs(median), np.finfo(np.float64).tiny)
    return [float(z) for z in (x - median) / scale]


def confusion(
    ids: Sequence[ClientId], flagged: Collection[ClientId], malicious: Collection[ClientId]
) -> dict[str, int]:
    """True and false positives and negatives of ``flagged`` among ``ids``."""
    counts = dict.fromkeys(COUNTS, 0)
    for cid in ids:
        hit, bad = cid in flagged, cid in malicious
        counts[("t" if hit == bad else "f") + ("p" if hit else "n")] += 1
    return counts


def rates(counts: dict[str, int]) -> dict[str, float | None]:
    """``tpr = tp / (tp + fn)`` and ``fpr = fp / (fp + tn)`` (None: no such client)."""
    positives, negatives = counts["tp"] + counts["fn"], counts["fp"] + counts["tn"]
    return {
        "tpr": counts["tp"] / positives if positives else None,
        "fpr": counts["fp"] / negatives if negatives else None,
    }


def combine_with(
    inner: Aggregator | BatchAggregator, updates: Sequence[WeightedUpdate], reference: Params
) -> BatchResult:
    """What ``inner`` makes of ``updates`` (a streaming one is fed one by one); zero when
    there are none."""
    if not updates:
        return BatchResult({k: torch.zeros_like(v) for k, v in reference.items()})
    if isinstance(inner, BatchAggregator):
        return inner.aggregate(updates, reference)
    inner.start(reference)
    for update in updates:
        inner.add(update.delta, update.weight)
    return BatchResult(inner.result())


class UpdateScreen(RoundRule):
    """Flags each round's clients whose update features lie more than ``threshold``
    robust z-scores from the round's median (on either side, in any feature), then
    hands the updates (``action = "exclude"``: the unflagged ones) to the aggregator it
    wraps.

    Args:
        settings: ``[algorithm.screening]``.
        malicious: the malicious clients of a simulated attack (None: no attack).
        attacked_from: the first round they act in (an update attack's
            ``attack.from_round``; 1 for a data attack).
    """

    name = "screening"

    def __init__(
        self,
        settings: ScreeningSettings,
        malicious: Collection[ClientId] | None = None,
        attacked_from: int = 1,
    ) -> None:
        super().__init__()
        self.chosen = settings
        self.malicious = None if malicious is None else frozenset(malicious)
        self.attacked_from = attacked_from
        self.inner: Aggregator | BatchAggregator | None = None
        self.totals = dict.fromkeys(COUNTS, 0)
        self.flags = 0

    def wrap(self, inner: Aggregator | BatchAggregator) -> None:
        """Screen the updates before ``inner`` combines them."""
        self.inner = inner

    def flag(self, updates: Sequence[WeightedUpdate], reference: Params) -> list[ClientId]:
        """The flagged clients (in arrival order); :attr:`last` gets the features."""
        ids = [u.client_id for u in updates]
        features = [update_features(u.delta, reference) for u in updates]
        scores = {name: robust_z([f[name] for f in features]) for name in features[0]}
        flagged = [
            cid
            for i, cid in enumerate(ids)
            if any(abs(z[i]) > self.chosen.threshold for z in scores.values())
        ]
        self.last = {
            "flagged": flagged,
            "features": dict(zip(ids, features, strict=True)),
            "z": {cid: {k: z[i] for k, z in scores.items()} for i, cid in enumerate(ids)},
        }
        return flagged

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        if self.inner is None:
            raise ValueError("the update screen has no aggregator to hand the updates to")
        flagged = self.flag(updates, reference)
        self.flags += len(flagged)
        if self.malicious is not None:
            truth = self.malicious if self.round >= self.attacked_from else frozenset()
            counts = confusion([u.client_id for u in updates], flagged, truth)
            self.last.update(counts)
            for key, count in counts.items():
                self.totals[key] += count
        if self.chosen.action == "flag":
            return combine_with(self.inner, updates, reference)
        kept = [u for u in updates if u.client_id not in set(flagged)]
        result = combine_with(self.inner, kept, reference)
        return BatchResult(result.combined, [*flagged, *result.excluded])

    def state(self) -> tuple[Params, dict[str, Any]]:
        return {}, {"totals": dict(self.totals), "flags": self.flags}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        self.totals = {k: int(meta.get("totals", {}).get(k, 0)) for k in COUNTS}
        self.flags = int(meta.get("flags", 0))

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"flagged": self.flags, "action": self.chosen.action}
        if self.malicious is not None:
            summary.update(self.totals)
            summary.update(rates(self.totals))
        return summary
