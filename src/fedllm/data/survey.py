"""Build a run's federation exactly as a run would, and measure its heterogeneity."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from fedllm.data.build import ClientRecords, build_client_records, build_federated_data
from fedllm.data.heterogeneity import Heterogeneity, measure_heterogeneity
from fedllm.data.settings import DataConfig, LongRecords
from fedllm.data.sources import DataError, Record, load_records, record_text
from fedllm.data.topic import fit_topics

Labeler = Callable[[Record], str]
"""A record -> its label (a field value or a topic name)."""


def survey_partition(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    per_record: LongRecords | None = None,
) -> Heterogeneity:
    """The heterogeneity of the federation a run with ``cfg`` and ``seed`` would train on.

    Clients, their training examples and their records are those of
    :func:`fedllm.data.build.build_federated_data`; labels are those of
    :func:`record_labeler` (so an ``iid`` or ``quantity`` split shows its label
    mix too); ``per_record`` as the run passes it (``privacy.per_record()``).

    Raises:
        DataError: unusable data or an impossible partition.
    """
    data = build_federated_data(cfg, tokenizer, seed, per_record)
    raw = build_client_records(cfg, seed)
    label_of, label_field = record_labeler(cfg, seed, raw)
    labels = None
    if label_of is not None:
        labels = {cid: [label_of(r) for r in raw.clients[cid].train] for cid in data.clients}
    return measure_heterogeneity(
        train_ids={cid: [e.input_ids for e in c.train] for cid, c in data.clients.items()},
        eval_sizes={cid: len(c.eval) for cid, c in data.clients.items()},
        labels=labels,
        label_field=label_field,
        dropped=data.dropped,
    )


def record_labeler(
    cfg: DataConfig, seed: int, raw: ClientRecords
) -> tuple[Labeler | None, str | None]:
    """How to label the records of ``raw``, and what the labels are.

    The ``partition_by`` field when every record has it and the partition is
    not ``topic``; otherwise the topics, fitted on the records the partitioner
    saw (all records but the test split: the fit depends only on that
    multiset, so for ``topic`` it is the partitioner's own, cached, fit). No
    labels when the records have no field and too few distinct texts for topics.
    """
    key = cfg.partition_by
    records = [r for split in raw.clients.values() for r in split.train]
    if cfg.partition != "topic" and all(key in r for r in records):
        return (lambda r: str(r[key])), key
    every = Counter(record_text(r) for r in load_records(cfg))
    pool = every - Counter(record_text(r) for r in raw.test)
    try:
        model = fit_topics(list(pool.elements()), cfg.num_topics, seed)
    except DataError:
        if cfg.partition == "topic":
            raise
        return None, None
    names = model.names
    return (lambda r: names[model.topic_of[record_text(r)]]), "topic"
