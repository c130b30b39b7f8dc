"""Label-shard and quantity-skew partitioners (built on flwr-datasets).

``shards`` is the pathological split of McMahan et al. (2017) and Li et al.
(2021): every client holds exactly ``data.labels_per_client`` values of
``data.partition_by``. ``quantity`` skews only how much data each client has;
which records a client gets is uniformly random, so labels stay iid.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fedllm.components import PARTITIONERS
from fedllm.data.partition import (
    Partition,
    check_enough,
    client_name,
    dataset_indices,
    field_values,
    index_dataset,
)
from fedllm.data.settings import DataConfig
from fedllm.data.sources import DataError, Record


@PARTITIONERS.register("shards")
def shards(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """Each client gets the records of exactly ``cfg.labels_per_client`` labels.

    The label is ``cfg.partition_by``. The labels are put in a seeded random
    order; client ``i`` gets label ``i mod L`` of that order plus
    ``labels_per_client - 1`` more drawn at random (flwr-datasets'
    ``PathologicalPartitioner``, "first-deterministic" mode, so with at least
    as many clients as labels every label is used). A label held by ``m``
    clients has its records split into ``m`` near-equal shards.

    Records of a label that no client drew are left out of the partition
    (fewer clients x labels_per_client than labels makes this certain).

    Raises:
        DataError: ``labels_per_client`` exceeds the number of labels, more
            clients than records, or a label drawn by more clients than it has records.
    """
    check_enough(len(records), cfg.num_clients, "shards")
    values = [str(v) for v in field_values(records, cfg.partition_by)]
    counts = Counter(values)
    k = cfg.labels_per_client
    if k > len(counts):
        raise DataError(
            f"shards partition: data.labels_per_client = {k} exceeds the {len(counts)} "
            f"distinct values of {cfg.partition_by!r}; choose 1 to {len(counts)}, or a "
            "data.partition_by field with more values"
        )
    rng = np.random.default_rng([seed % 2**63, 0x5A])
    labels = sorted(counts)
    code = {labels[j]: i for i, j in enumerate(rng.permutation(len(labels)))}  # seeded order
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(
        num_partitions=cfg.num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=int(rng.integers(2**32)),
    )
    partitioner.dataset = index_dataset(
        {"index": np.arange(len(values)), "label": [code[v] for v in values]}
    )
    out: Partition = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "classes will NOT be used": documented above
            for pid in range(cfg.num_clients):
                out[client_name(pid, cfg.num_clients)] = dataset_indices(
                    partitioner.load_partition(pid)
                )
    except ValueError as err:
        rarest, fewest = min(counts.items(), key=lambda item: (item[1], item[0]))
        raise DataError(
            f"shards partition: a value of {cfg.partition_by!r} was drawn by more clients "
            f"than it has records (data.num_clients = {cfg.num_clients}, "
            f"data.labels_per_client = {k}; the rarest value, {rarest!r}, has {fewest}); "
            f"lower data.num_clients or data.labels_per_client ({err})"
        ) from None
    return out


@PARTITIONERS.register("quantity")
def quantity(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """Quantity skew: client sizes from :func:`quantity_sizes`, records drawn uniformly.

    ``client-000`` is the largest client. Every record is assigned; the label
    mix of each client is a uniform random sample of the whole.

    Raises:
        DataError: more clients than records.
    """
    check_enough(len(records), cfg.num_clients, "quantity")
    rng = np.random.default_rng([seed % 2**63, 0x51])
    sizes = quantity_sizes(len(records), cfg, rng)
    from flwr_datasets.partitioner import SizePartitioner

    partitioner = SizePartitioner(partition_sizes=sizes)
    partitioner.dataset = index_dataset({"index": rng.permutation(len(records))})
    return {
        client_name(k, cfg.num_clients): dataset_indices(partitioner.load_partition(k))
        for k in range(cfg.num_clients)
    }


def quantity_sizes(num_records: int, cfg: DataConfig, rng: np.random.Generator) -> list[int]:
    """Client sizes in records, largest first, summing to ``num_records``.

    Every client first gets the floor ``min(cfg.min_client_examples,
    num_records // cfg.num_clients)``; the rest is split in proportion to a
    weight per client (largest remainders get the leftover records):

    - ``"powerlaw"``: the client of rank ``k`` (1 = largest) weighs
      ``k ** -cfg.quantity_exponent`` (Zipf's rank-size law; 0: equal sizes).
    - ``"lognormal"``: weights drawn from LogNormal(0, ``cfg.quantity_sigma``),
      sorted (0: equal sizes; the coefficient of variation of the weights is
      ``sqrt(exp(sigma^2) - 1)``).

    Args:
        num_records: records to split (at least ``cfg.num_clients``).
        cfg: ``num_clients``, ``min_client_examples`` and the ``quantity_*`` fields.
        rng: draws the log-normal weights.
    """
    n, clients = num_records, cfg.num_clients
    if cfg.quantity_skew == "powerlaw":
        weights = np.arange(1, clients + 1, dtype=np.float64) ** -cfg.quantity_exponent
    else:
        weights = rng.lognormal(0.0, cfg.quantity_sigma, size=clients)
    floor = min(cfg.min_client_examples, n // clients)
    shares = weights / weights.sum() * (n - floor * clients)
    sizes = np.floor(shares).astype(np.int64)
    leftover = n - floor * clients - int(sizes.sum())
    by_remainder = np.argsort(-(shares - sizes), kind="stable")
    sizes[by_remainder[:leftover]] += 1
    return sorted((floor + int(s) for s in sizes), reverse=True)
