"""How different the clients' data are: sizes, label mixes, token and label divergences.

Every figure compares a client with the global distribution, which is the
pool of all clients' training data (so larger clients weigh more in it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.distance import jensenshannon


def jensen_shannon(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon divergence of two distributions, in bits (0 = equal, 1 = disjoint).

    ``JSD(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``.
    Inputs are counts or probabilities; each is normalised to sum to 1.
    """
    distance = float(jensenshannon(_normalised(p), _normalised(q), base=2))
    return distance * distance  # scipy returns the distance, the divergence's square root


def label_emd(p: ArrayLike, q: ArrayLike) -> float:
    """Earth mover's distance between two label distributions with unit ground distance.

    Labels are categories with no order (users, categories, topics), so moving
    mass between any two distinct labels costs 1; the EMD then equals the total
    variation distance ``sum(|p - q|) / 2``, in [0, 1] (the share of records
    that would have to change label). Inputs are counts or probabilities.
    """
    return float(np.abs(_normalised(p) - _normalised(q)).sum() / 2)


def token_counts(examples: Sequence[Sequence[int]], size: int) -> NDArray[np.int64]:
    """How often each token id occurs in ``examples`` (a vector of ``size`` counts)."""
    if not examples:
        return np.zeros(size, dtype=np.int64)
    ids = np.concatenate([np.asarray(e, dtype=np.int64) for e in examples])
    return np.bincount(ids, minlength=size)


@dataclass
class ClientStats:
    """One client's figures.

    Attributes:
        client_id: the client's id.
        train: training examples.
        eval: held-out examples.
        train_tokens: tokens in the training examples.
        label_counts: training records per label, aligned with :attr:`Heterogeneity.labels`.
        token_jsd: Jensen-Shannon divergence of its unigram token distribution
            from the global one, in bits.
        label_emd: earth mover's distance (= total variation) of its label
            distribution from the global one; None without labels.
    """

    client_id: str
    train: int
    eval: int
    train_tokens: int
    label_counts: list[int]
    token_jsd: float
    label_emd: float | None

    def top_labels(self, labels: Sequence[str], n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` most frequent labels and their shares of the client's records."""
        total = sum(self.label_counts)
        ranked = sorted(
            (i for i, c in enumerate(self.label_counts) if c), key=lambda i: -self.label_counts[i]
        )
        return [(labels[i], self.label_counts[i] / total) for i in ranked[:n]]


@dataclass
class Heterogeneity:
    """The heterogeneity figures of a federation.

    Attributes:
        label_field: what the labels are (``"category"``, ``"topic"``...); None without labels.
        labels: label names, most frequent overall first (ties by name).
        clients: per-client figures, in client id order.
        dropped: client id -> why it was left out of the federation.
    """

    label_field: str | None
    labels: list[str]
    clients: list[ClientStats]
    dropped: dict[str, str] = field(default_factory=dict)

    def label_matrix(self) -> NDArray[np.float64]:
        """Clients x labels: each client's share of training records per label (rows sum to 1)."""
        counts = np.asarray([c.label_counts for c in self.clients], dtype=np.float64)
        if counts.size == 0:
            return counts.reshape(len(self.clients), 0)
        shares: NDArray[np.float64] = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        return shares

    def summary(self) -> dict[str, Any]:
        """The headline figures: sizes (examples) and their spread, mean and max divergences.

        ``size_cv`` is the coefficient of variation (std / mean) of training
        examples per client; ``token_jsd_*`` are in bits; ``label_emd_*`` are
        None without labels; ``labels_per_client`` is the mean number of
        distinct labels a client holds.
        """
        sizes = np.asarray([c.train for c in self.clients], dtype=np.float64)
        jsd = [c.token_jsd for c in self.clients]
        emd = [c.label_emd for c in self.clients if c.label_emd is not None]
        held = [sum(n > 0 for n in c.label_counts) for c in self.clients]
        return {
            "num_clients": len(self.clients),
            "train_examples": int(sizes.sum()),
            "eval_examples": sum(c.eval for c in self.clients),
            "train_min": int(sizes.min()),
            "train_median": float(np.median(sizes)),
            "train_max": int(sizes.max()),
            "size_cv": float(sizes.std() / sizes.mean()),
            "token_jsd_mean": float(np.mean(jsd)),
            "token_jsd_max": float(np.max(jsd)),
            "label_emd_mean": float(np.mean(emd)) if emd else None,
            "label_emd_max": float(np.max(emd)) if emd else None,
            "labels_per_client": float(np.mean(held)) if self.label_field is not None else None,
            "dropped_clients": len(self.dropped),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready: summary, labels, and per-client figures with label counts."""
        return {
            "summary": self.summary(),
            "label_field": self.label_field,
            "labels": list(self.labels),
            "clients": [
                {
                    "client": c.client_id,
                    "train": c.train,
                    "eval": c.eval,
                    "train_tokens": c.train_tokens,
                    "token_jsd": c.token_jsd,
                    "label_emd": c.label_emd,
                    "label_counts": list(c.label_counts),
                }
                for c in self.clients
            ],
            "dropped": dict(self.dropped),
        }


def measure_heterogeneity(
    train_ids: Mapping[str, Sequence[Sequence[int]]],
    eval_sizes: Mapping[str, int],
    labels: Mapping[str, Sequence[str]] | None = None,
    label_field: str | None = None,
    dropped: Mapping[str, str] | None = None,
) -> Heterogeneity:
    """Compute every client's figures against the pooled (global) distributions.

    Args:
        train_ids: client id -> the token ids of each of its training examples.
        eval_sizes: client id -> held-out examples.
        labels: client id -> the label of each of its training records; None: no labels.
        label_field: what the labels are, for reports.
        dropped: client id -> why it was left out (reported, not measured).
    """
    clients = sorted(train_ids)
    size = 1 + max((max(e) for cid in clients for e in train_ids[cid] if len(e)), default=0)
    tokens = {cid: token_counts(train_ids[cid], size) for cid in clients}
    global_tokens = sum(tokens.values(), np.zeros(size, dtype=np.int64))

    names: list[str] = []
    label_counts: dict[str, list[int]] = {cid: [] for cid in clients}
    if labels is not None:
        overall = Counter(label for cid in clients for label in labels[cid])
        names = sorted(overall, key=lambda name: (-overall[name], name))
        for cid in clients:
            mine = Counter(labels[cid])
            label_counts[cid] = [mine[name] for name in names]
    global_labels = [sum(label_counts[cid][j] for cid in clients) for j in range(len(names))]

    stats = [
        ClientStats(
            client_id=cid,
            train=len(train_ids[cid]),
            eval=int(eval_sizes[cid]),
            train_tokens=int(tokens[cid].sum()),
            label_counts=label_counts[cid],
            token_jsd=jensen_shannon(tokens[cid], global_tokens),
            label_emd=label_emd(label_counts[cid], global_labels) if labels is not None else None,
        )
        for cid in clients
    ]
    return Heterogeneity(
        label_field=label_field if labels is not None else None,
        labels=names,
        clients=stats,
        dropped=dict(dropped or {}),
    )


def _normalised(x: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    total = arr.sum()
    if arr.ndim != 1 or total <= 0 or (arr < 0).any():
        raise ValueError(f"expected a non-empty 1-d vector of non-negative counts, got {arr!r}")
    shares: NDArray[np.float64] = arr / total
    return shares
