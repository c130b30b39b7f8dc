"""Partitioners: split record indices among clients (built on flwr-datasets).

Each partitioner is registered in :data:`fedllm.components.PARTITIONERS` and
has the signature ``(records, cfg, seed) -> {client_id: [record index, ...]}``;
every index it assigns appears exactly once. Only an index column and a label
column are handed to flwr-datasets, never the text. This module holds the
basic ones; :mod:`fedllm.data.skew` adds ``shards`` and ``quantity``,
:mod:`fedllm.data.topic` adds ``topic``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedllm.components import PARTITIONERS
from fedllm.data.settings import DataConfig
from fedllm.data.sources import DataError, Record

if TYPE_CHECKING:
    from datasets import Dataset

Partition = dict[str, list[int]]
"""Client id -> indices into the partitioned record list."""

MAX_ID_CHARS = 64
"""Longest client id made from a field value, in characters."""


@PARTITIONERS.register("natural")
def natural(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """One client per value of ``cfg.partition_by``; the ``num_clients`` largest are kept.

    Ties in size are broken by id. Client ids are the values made filesystem-safe.
    The seed is unused: the grouping is a property of the data.
    """
    del seed
    ids = _safe_ids(field_values(records, cfg.partition_by))
    counts = Counter(ids)
    kept = set(sorted(counts, key=lambda cid: (-counts[cid], cid))[: cfg.num_clients])
    rows = [i for i, cid in enumerate(ids) if cid in kept]
    from flwr_datasets.partitioner import NaturalIdPartitioner

    partitioner = NaturalIdPartitioner(partition_by="client")
    partitioner.dataset = index_dataset({"index": rows, "client": [ids[i] for i in rows]})
    out: Partition = {}
    with contextlib.redirect_stderr(io.StringIO()):  # flwr-datasets draws a tqdm bar
        for pid in range(partitioner.num_partitions):
            client = str(partitioner.partition_id_to_natural_id[pid])
            out[client] = dataset_indices(partitioner.load_partition(pid))
    return out


@PARTITIONERS.register("iid")
def iid(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """``num_clients`` equal-sized random shards (``client-000``, ``client-001``...)."""
    check_enough(len(records), cfg.num_clients, "iid")
    order = np.random.default_rng(seed).permutation(len(records))
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=cfg.num_clients)
    partitioner.dataset = index_dataset({"index": order})
    return {
        client_name(k, cfg.num_clients): dataset_indices(partitioner.load_partition(k))
        for k in range(cfg.num_clients)
    }


@PARTITIONERS.register("dirichlet")
def dirichlet(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """Label-skewed split: each label's records spread by a Dirichlet(alpha) draw.

    The label is ``cfg.partition_by``; smaller ``cfg.dirichlet_alpha`` gives
    more skew. Every client gets at least ``min(cfg.min_client_examples,
    records // num_clients)`` records (flwr-datasets redraws up to 10 times).
    """
    values = field_values(records, cfg.partition_by)
    return dirichlet_by_label(values, cfg, seed, f"values of {cfg.partition_by!r}")


def dirichlet_by_label(
    labels: Sequence[Any], cfg: DataConfig, seed: int, what: str, name: str = "dirichlet"
) -> Partition:
    """Spread the records of each label among clients by a Dirichlet(``cfg.dirichlet_alpha``) draw.

    The engine of :func:`dirichlet`, for any per-record label (a field, a topic...).

    Args:
        labels: one label per record (compared as strings).
        cfg: ``num_clients``, ``dirichlet_alpha`` and ``min_client_examples`` are used.
        seed: fixes the draw.
        what: what the labels are, for the error message (e.g. ``"values of 'user'"``).
        name: the partitioner, for the error message.

    Raises:
        DataError: more clients than records, or no draw in 10 met the minimum size.
    """
    check_enough(len(labels), cfg.num_clients, name)
    _, codes = np.unique(np.asarray([str(v) for v in labels], dtype=object), return_inverse=True)
    min_size = min(cfg.min_client_examples, len(labels) // cfg.num_clients)
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=cfg.num_clients,
        partition_by="label",
        alpha=float(cfg.dirichlet_alpha),
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = index_dataset(
        {"index": np.arange(len(labels)), "label": codes.astype(np.int64)}
    )
    out: Partition = {}
    try:
        with warnings.catch_warnings():  # one warning per failed redraw
            warnings.simplefilter("ignore")
            for k in range(cfg.num_clients):
                part = partitioner.load_partition(k)
                out[client_name(k, cfg.num_clients)] = dataset_indices(part)
    except ValueError as err:
        raise DataError(
            f"{name} partition failed: no draw in 10 gave every one of "
            f"{cfg.num_clients} clients at least {min_size} records "
            f"(data.dirichlet_alpha = {cfg.dirichlet_alpha}, {len(labels)} records, "
            f"{codes.max() + 1} {what}); raise "
            f"data.dirichlet_alpha or lower data.num_clients ({err})"
        ) from None
    return out


def field_values(records: Sequence[Record], field: str) -> list[Any]:
    """The value of ``field`` in every record.

    Raises:
        DataError: some record lacks the field; names it and the fields records have.
    """
    missing = [i for i, r in enumerate(records) if field not in r]
    if missing:
        have = sorted({key for r in records for key in r})
        which = (
            "the records have"
            if len(missing) == len(records)
            else f"record {missing[0]} (and {len(missing) - 1} others) has"
        )
        raise DataError(
            f"data.partition_by = {field!r}: {which} no field {field!r}; "
            f"fields present: {', '.join(have)}"
        )
    return [r[field] for r in records]


def client_name(k: int, num_clients: int) -> str:
    """``client-007``: zero-padded to at least 3 digits."""
    return f"client-{k:0{max(3, len(str(num_clients - 1)))}d}"


def _safe_ids(values: Sequence[Any]) -> list[str]:
    """Each value as a filesystem-safe id; distinct values stay distinct."""
    raw = [str(v) for v in values]
    safe = {v: _sanitize(v) for v in set(raw)}
    clashes = Counter(safe.values())
    for value, cid in safe.items():
        if clashes[cid] > 1 or not cid:
            digest = hashlib.sha1(value.encode("utf-8")).hexdigest()[:8]
            safe[value] = f"{cid}-{digest}" if cid else digest
    return [safe[v] for v in raw]


def _sanitize(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._")[:MAX_ID_CHARS]


def index_dataset(columns: dict[str, Any]) -> Dataset:
    """A ``datasets.Dataset`` of these columns, for a flwr-datasets partitioner.

    flwr-datasets and datasets are imported here, on first use, not with this
    module: they bring pyarrow, pandas and matplotlib (over a second), which a
    run building its data in a child process never needs in its own.
    """
    from datasets import Dataset

    return Dataset.from_dict(columns)


def dataset_indices(part: Dataset) -> list[int]:
    """The ``index`` column of a flwr-datasets partition, as ints."""
    return [int(i) for i in part[:]["index"]]


def check_enough(num_records: int, num_clients: int, name: str) -> None:
    """Refuse more clients than records (``name``: the partitioner, for the message)."""
    if num_clients > num_records:
        raise DataError(
            f"{name} partition: data.num_clients = {num_clients} exceeds the "
            f"{num_records} records available for training"
        )
