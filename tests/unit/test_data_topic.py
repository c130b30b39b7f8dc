"""Topic skew: clustering finds planted topics; small alpha concentrates them on clients."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from fedllm.config import DataConfig
from fedllm.data.sources import DataError, Record, record_text
from fedllm.data.topic import fit_topics, topic, topic_labels

VOCABULARIES = [
    ["apple", "pear", "plum", "grape", "mango", "melon", "cherry", "peach"],
    ["truck", "boat", "train", "plane", "bicycle", "tractor", "scooter", "ferry"],
    ["violin", "piano", "guitar", "cello", "flute", "drum", "trumpet", "harp"],
    ["granite", "basalt", "marble", "quartz", "slate", "shale", "pumice", "flint"],
]


def _corpus(topics: int, per_topic: int, seed: int = 0) -> tuple[list[Record], list[int]]:
    """Documents of 10 words drawn from one of ``topics`` disjoint vocabularies, and the truth."""
    rng = np.random.default_rng(seed)
    records, truth = [], []
    for t in range(topics):
        for _ in range(per_topic):
            words = rng.choice(VOCABULARIES[t], size=10)
            records.append({"text": " ".join(words)})
            truth.append(t)
    order = rng.permutation(len(records))
    return [records[i] for i in order], [truth[i] for i in order]


def _entropy(values: list[int]) -> float:
    counts = Counter(values).values()
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts)


def test_clustering_finds_two_planted_vocabularies() -> None:
    records, truth = _corpus(topics=2, per_topic=150)
    labels = topic_labels(records, DataConfig(num_topics=2), seed=0)
    # a perfect clustering up to renaming: one topic per planted vocabulary
    assert {(t, lab) for t, lab in zip(truth, labels, strict=True)} in (
        {(0, 0), (1, 1)},
        {(0, 1), (1, 0)},
    )
    model = fit_topics([r["text"] for r in records], 2, seed=0)
    for terms in model.terms:  # each topic is described by one vocabulary's words
        assert sum(any(term in v for term in terms) for v in VOCABULARIES[:2]) == 1


def test_topic_partition_covers_every_record_and_small_alpha_concentrates_topics() -> None:
    records, truth = _corpus(topics=4, per_topic=200)

    def mean_entropy(alpha: float) -> float:
        cfg = DataConfig(num_clients=5, num_topics=4, dirichlet_alpha=alpha)
        part = topic(records, cfg, seed=1)
        assert sorted(i for rows in part.values() for i in rows) == list(range(len(records)))
        return sum(_entropy([truth[i] for i in rows]) for rows in part.values()) / len(part)

    concentrated, even = mean_entropy(0.05), mean_entropy(100.0)
    assert even > 0.95 * math.log(4)  # each client sees all four planted topics evenly
    assert concentrated < even - 0.5


def test_topic_partition_is_seeded_and_the_fit_ignores_record_order() -> None:
    records, _ = _corpus(topics=3, per_topic=60, seed=2)
    cfg = DataConfig(num_clients=3, num_topics=3)
    assert topic(records, cfg, seed=5) == topic(records, cfg, seed=5)
    assert topic(records, cfg, seed=5) != topic(records, cfg, seed=6)
    texts = [r["text"] for r in records]
    assert fit_topics(texts, 3, seed=5) == fit_topics(texts[::-1], 3, seed=5)


def test_more_topics_than_distinct_texts_is_a_clear_error() -> None:
    records = [{"text": t} for t in ["red apple", "green pear", "red apple", "blue plum"]]
    with pytest.raises(DataError, match=r"data\.num_topics = 5 exceeds the 3 distinct texts"):
        topic(records, DataConfig(num_clients=2, num_topics=5), seed=0)


def test_text_of_only_stop_words_is_a_clear_error() -> None:
    records = [{"text": t} for t in ["the and of", "to be or not", "is it a", "we are"]]
    with pytest.raises(DataError, match="no words to cluster on"):
        topic(records, DataConfig(num_clients=2, num_topics=2), seed=0)


def test_record_text_reads_chat_and_text_records() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
        ],
        "user": "u1",
    }
    assert record_text(chat) == "Hi there\nHello!"
    assert record_text({"text": "plain", "topic": "x"}) == "plain"
