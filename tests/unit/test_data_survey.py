"""Which labels the survey of a partition uses, and that topic labels are the partitioner's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedllm.config import DataConfig
from fedllm.data.build import build_client_records
from fedllm.data.survey import record_labeler
from fedllm.data.topic import _fit

WORDS = [["apple", "pear", "plum", "grape"], ["truck", "boat", "train", "plane"]]


def _write_corpus(path: Path, with_field: bool) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as handle:
        for i in range(120):
            record = {"text": " ".join(rng.choice(WORDS[i % 2], size=6)) + f" n{i}"}
            if with_field:
                record["kind"] = f"k{i % 3}"
            handle.write(json.dumps(record) + "\n")
    return path


def test_topic_labels_are_those_the_partitioner_fitted(tmp_path: Path) -> None:
    source = _write_corpus(tmp_path / "docs.jsonl", with_field=False)
    cfg = DataConfig(source=str(source), partition="topic", num_clients=3, num_topics=2)
    _fit.cache_clear()
    raw = build_client_records(cfg, seed=3)
    assert _fit.cache_info().misses == 1
    label_of, field = record_labeler(cfg, 3, raw)
    # the survey rebuilt exactly the partitioner's input: its fit is a cache hit
    assert _fit.cache_info().misses == 1 and _fit.cache_info().hits >= 1
    assert field == "topic" and label_of is not None
    records = [r for split in raw.clients.values() for r in [*split.train, *split.eval]]
    planted = [int(r["text"].split()[0] in WORDS[1]) for r in records]
    pairs = {(label_of(r), truth) for r, truth in zip(records, planted, strict=True)}
    assert len(pairs) == 2 and len({name for name, _ in pairs}) == 2  # one topic per vocabulary
    assert all(name.startswith(("t0 ", "t1 ")) for name, _ in pairs)


def test_labels_are_the_partition_field_when_present_else_topics(tmp_path: Path) -> None:
    with_field = _write_corpus(tmp_path / "a.jsonl", with_field=True)
    cfg = DataConfig(source=str(with_field), partition="iid", partition_by="kind", num_topics=2)
    raw = build_client_records(cfg, seed=0)
    label_of, field = record_labeler(cfg, 0, raw)
    assert field == "kind" and label_of is not None
    first = raw.clients[next(iter(raw.clients))].train[0]
    assert label_of(first) == first["kind"]

    without = _write_corpus(tmp_path / "b.jsonl", with_field=False)
    cfg = DataConfig(source=str(without), partition="iid", partition_by="kind", num_topics=2)
    _, field = record_labeler(cfg, 0, build_client_records(cfg, seed=0))
    assert field == "topic"
