"""Shared value types: the exchanged state, client updates and round records."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

Params = dict[str, torch.Tensor]
"""A flat dict of named tensors: the trainable state of a model, or a delta of it."""

ClientId = str


PART_SEPARATOR = "/"
"""A message's arrays named ``<plug-in>/<name>`` belong to that plug-in, not to the model
(model parameter names never hold it)."""


@dataclass
class ClientUpdate:
    """What one client sends back after local training, as the server reads it.

    Attributes:
        client_id: who trained.
        delta: trained state minus broadcast state, same keys as the broadcast.
        num_examples: training examples seen (the aggregation weight).
        metrics: scalar local metrics (``train_loss``, ``steps``, ``tokens``...).
        parts: tensors sent beside the delta by a plug-in, by plug-in name
            (SCAFFOLD's control-variate change); they bypass the aggregation
            pipeline and are counted in the bytes sent.
        coverage: the entries of the delta the client really trained (0/1 masks by
            tensor name, broadcastable; None: all), for an aggregator that averages
            each entry over its holders (heterogeneous LoRA ranks).
    """

    client_id: ClientId
    delta: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    parts: dict[str, Params] = field(default_factory=dict)
    coverage: Params | None = None


def split_parts(arrays: Params) -> tuple[Params, dict[str, Params]]:
    """(model tensors, plug-in parts by plug-in name) of a message's arrays."""
    own: Params = {}
    parts: dict[str, Params] = {}
    for key, tensor in arrays.items():
        plugin, sep, name = key.partition(PART_SEPARATOR)
        if sep:
            parts.setdefault(plugin, {})[name] = tensor
        else:
            own[key] = tensor
    return own, parts


def join_parts(own: Params, parts: dict[str, Params]) -> Params:
    """Inverse of :func:`split_parts`."""
    out = dict(own)
    for plugin, arrays in parts.items():
        out.update({f"{plugin}{PART_SEPARATOR}{k}": v for k, v in arrays.items()})
    return out


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

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> RoundRecord:
        """The record :meth:`to_json` wrote (unknown keys back in ``extra``)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        own = {k: v for k, v in line.items() if k in known}
        return cls(**own, extra={k: v for k, v in line.items() if k not in known})
