"""Topic skew for text: topics clustered from the records' text, then Dirichlet over topics.

A record's topic is its cluster under TF-IDF + k-means (scikit-learn); the
``topic`` partitioner spreads each topic's records among clients by the same
Dirichlet draw as ``dirichlet`` uses for a label field.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedllm.components import PARTITIONERS
from fedllm.data.partition import Partition, dirichlet_by_label
from fedllm.data.settings import DataConfig
from fedllm.data.sources import DataError, Record, record_text

MAX_FEATURES = 20_000
"""Largest TF-IDF vocabulary (the most frequent terms are kept)."""

TOP_TERMS = 5
"""Terms kept to describe each topic."""

KMEANS_RESTARTS = 4
"""k-means runs from different seeded starts; the best (lowest inertia) is kept."""


@dataclass(frozen=True)
class TopicModel:
    """The topics of a corpus.

    Attributes:
        topic_of: text -> topic id (``0 .. num_topics - 1``), for every fitted text.
        terms: per topic, its highest-weight TF-IDF terms (of the centroid), best first.
    """

    topic_of: dict[str, int]
    terms: list[list[str]]

    @property
    def names(self) -> list[str]:
        """``"t0 (term term term)"`` for each topic, for tables and plots."""
        return [f"t{i} ({' '.join(words[:3])})" for i, words in enumerate(self.terms)]


def fit_topics(texts: Sequence[str], num_topics: int, seed: int) -> TopicModel:
    """Cluster ``texts`` into ``num_topics`` topics: TF-IDF, then k-means.

    TF-IDF uses English stop words, sublinear term frequency, L2-normalised rows
    and at most :data:`MAX_FEATURES` terms, so k-means on it is close to
    clustering by cosine similarity. The result depends only on the multiset
    of texts (they are sorted first) and the seed; identical texts share a
    topic. The last two fits are cached.

    Raises:
        DataError: fewer distinct texts than topics, or no word left to cluster on.
    """
    distinct = len(set(texts))
    if distinct < num_topics:
        raise DataError(
            f"topic partition: data.num_topics = {num_topics} exceeds the {distinct} distinct "
            f"texts; choose data.num_topics <= {distinct}"
        )
    return _fit(tuple(sorted(texts)), num_topics, seed % 2**32)


def topic_labels(records: Sequence[Record], cfg: DataConfig, seed: int) -> list[int]:
    """The topic of every record (:func:`fit_topics` over the records' text)."""
    texts = [record_text(r) for r in records]
    model = fit_topics(texts, cfg.num_topics, seed)
    return [model.topic_of[t] for t in texts]


@PARTITIONERS.register("topic")
def topic(records: Sequence[Record], cfg: DataConfig, seed: int) -> Partition:
    """Topic-skewed split: :func:`topic_labels`, then ``dirichlet`` over the topics.

    Smaller ``cfg.dirichlet_alpha`` concentrates each client on fewer topics;
    ``cfg.num_topics`` sets how many topics are found. Every record is assigned.

    Raises:
        DataError: too few distinct texts or words, or no Dirichlet draw met the minimum size.
    """
    labels = topic_labels(records, cfg, seed)
    what = f"topics (data.num_topics = {cfg.num_topics})"
    return dirichlet_by_label(labels, cfg, seed, what, name="topic")


@functools.lru_cache(maxsize=2)
def _fit(texts: tuple[str, ...], num_topics: int, random_state: int) -> TopicModel:
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True, max_features=MAX_FEATURES)
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError as err:  # empty vocabulary
        raise DataError(
            f"topic partition: no words to cluster on after removing English stop words ({err})"
        ) from None
    kmeans = KMeans(n_clusters=num_topics, n_init=KMEANS_RESTARTS, random_state=random_state)
    labels = kmeans.fit_predict(matrix)
    vocab = vectorizer.get_feature_names_out()
    top = np.argsort(-kmeans.cluster_centers_, axis=1)[:, :TOP_TERMS]
    return TopicModel(
        topic_of={text: int(label) for text, label in zip(texts, labels, strict=True)},
        terms=[[str(vocab[j]) for j in row] for row in top],
    )
