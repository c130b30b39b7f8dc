"""Shared value types: the exchanged state, client updates and round records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Params = dict[str, torch.Tensor]
"""A flat dict of named tensors: the trainable state of a model, or a delta of it."""

ClientId = str


@dataclass
class ClientUpdate:
    """What one client sends back after local training.

    Attributes:
        client_id: who trained.
        delta: trained state minus broadcast state, same keys as the broadcast.
        num_examples: training examples seen (the aggregation weight).
        metrics: scalar local metrics (``train_loss``, ``steps``, ``tokens``...).
        extra: tensors sent beside the delta that are not part of the model
            (SCAFFOLD's control-variate change); they bypass the aggregation
            pipeline and are counted in the bytes sent.
    """

    client_id: ClientId
    delta: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: Params = field(default_factory=dict)


@dataclass
class RoundRecord:
    """One line of ``metrics.jsonl``: everything measured in a round."""

    round: int
    sampled: list[ClientId] = field(default_factory=list)
    accepted: list[ClientId] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    skipped: str | None = None
    train_loss: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    time_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``extra`` fields are merged in at top level)."""
        out: dict[str, Any] = {
            "round": self.round,
            "sampled": self.sampled,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "train_loss": self.train_loss,
            "eval": self.eval,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "time_s": self.time_s,
            "peak_rss_mb": self.peak_rss_mb,
        }
        out.update(self.extra)
        return out
