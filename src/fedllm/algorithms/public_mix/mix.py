"""Public examples mixed into a client's batches (every client holds the public corpus)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedllm.data import Example
from fedllm.data.public import PublicData
from fedllm.seeding import derive_seed

if TYPE_CHECKING:
    from fedllm.config import Config


@dataclass(frozen=True)
class PublicMix:
    """How many public examples go into each client micro-batch, and which corpus.

    Attributes:
        examples: the public training examples (the same on every client).
        per_batch: public examples in every micro-batch, ``0 < per_batch < batch_size``.
    """

    examples: Sequence[Example]
    per_batch: int

    def batches(
        self, private: Sequence[Example], batch_size: int, seed: int
    ) -> Iterator[list[Example]]:
        """Endless seeded micro-batches: ``batch_size - per_batch`` private examples,
        then ``per_batch`` public ones.

        Each corpus is read as an endless stream of fresh seeded permutations (an
        epoch each), so every batch is full and holds exactly ``per_batch``
        public examples. The private stream is seeded by ``seed``, the public one
        by a seed derived from it (so clients and rounds draw different ones).

        Raises:
            ValueError: no private or public examples, or a share that leaves
                no room for either.
        """
        if not 0 < self.per_batch < batch_size:
            raise ValueError(
                f"{self.per_batch} public examples per batch of {batch_size}: "
                f"it must leave 1 to {batch_size - 1}"
            )
        own = index_stream(len(private), torch.Generator().manual_seed(seed))
        public_seed = derive_seed(seed, "public-mix")
        shared = index_stream(len(self.examples), torch.Generator().manual_seed(public_seed))
        n_private = batch_size - self.per_batch
        while True:
            rows = list(itertools.islice(own, n_private))
            public_rows = list(itertools.islice(shared, self.per_batch))
            yield [private[i] for i in rows] + [self.examples[i] for i in public_rows]


def index_stream(num_examples: int, generator: torch.Generator) -> Iterator[int]:
    """Indices ``0..num_examples-1`` in a fresh seeded permutation each epoch, forever."""
    if num_examples == 0:
        raise ValueError("cannot draw examples from an empty set")
    while True:
        yield from torch.randperm(num_examples, generator=generator).tolist()


def public_mix(config: Config, public: PublicData | None) -> PublicMix | None:
    """The public examples mixed into client batches, or None (no corpus, or ratio 0)."""
    if public is None or config.public.mix_ratio == 0:
        return None
    return PublicMix(public.train, config.public.public_per_batch(config.client.batch_size))
