"""Public examples mixed into client batches: exactly the configured share, seeded."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from fedllm.algorithms.public_mix.client import MixedBatches
from fedllm.algorithms.public_mix.mix import PublicMix, public_mix
from fedllm.client.train import batch_indices, draw_batches, train_locally
from fedllm.config import ClientConfig, parse_config
from fedllm.data import Example
from fedllm.data.public import PublicData

PRIVATE = [Example([100 + i, 7], [100 + i, 7]) for i in range(7)]
PUBLIC = [Example([200 + j, 7, 7], [200 + j, 7, 7]) for j in range(5)]


class Recorder(torch.nn.Module):
    """Remembers the first token of every example of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list[int]] = []

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        self.batches.append(input_ids[:, 0].tolist())
        return SimpleNamespace(loss=(self.w**2).sum())


def trained_batches(seed: int, per_batch: int, batch_size: int = 4) -> list[list[int]]:
    model = Recorder()
    cfg = ClientConfig(batch_size=batch_size, grad_accum=2, local_steps=15)
    mix = PublicMix(PUBLIC, per_batch)
    train_locally(model, PRIVATE, cfg, cfg.local_steps, seed, 0, hooks=[MixedBatches(mix)])
    return model.batches


@pytest.mark.parametrize(("per_batch", "batch_size"), [(1, 4), (3, 4), (2, 6)])
def test_every_batch_holds_exactly_the_public_share(per_batch: int, batch_size: int) -> None:
    batches = trained_batches(3, per_batch, batch_size)
    assert len(batches) == 30  # 15 steps x 2 micro-batches
    for batch in batches:
        assert len(batch) == batch_size
        assert sum(token >= 200 for token in batch) == per_batch
        assert all(token >= 200 for token in batch[batch_size - per_batch :])


def test_each_corpus_is_read_epoch_by_epoch() -> None:
    batches = trained_batches(5, 1)
    private = [t - 100 for batch in batches for t in batch if t < 200]
    public = [t - 200 for batch in batches for t in batch if t >= 200]
    for stream, n in ((private, len(PRIVATE)), (public, len(PUBLIC))):
        whole = len(stream) // n * n
        for start in range(0, whole, n):
            assert sorted(stream[start : start + n]) == list(range(n))  # a permutation


def test_mixing_is_seeded() -> None:
    assert trained_batches(11, 1) == trained_batches(11, 1)
    public_draws = [[t for b in trained_batches(s, 1) for t in b if t >= 200] for s in (1, 2)]
    assert public_draws[0] != public_draws[1]


def test_without_public_data_batches_are_the_private_ones_as_before() -> None:
    drawn = list(itertools.islice(draw_batches(PRIVATE, 3, 9), 6))
    rows = itertools.islice(batch_indices(len(PRIVATE), 3, torch.Generator().manual_seed(9)), 6)
    assert drawn == [[PRIVATE[i] for i in batch] for batch in rows]


def test_the_share_comes_from_the_config() -> None:
    raw = {"public": {"source": "pydoc", "mix_ratio": 0.5}, "client": {"batch_size": 6}}
    cfg = parse_config(raw)
    mix = public_mix(cfg, PublicData("pydoc", PUBLIC, PUBLIC[:1]))
    assert mix is not None and mix.per_batch == 3 and list(mix.examples) == PUBLIC
    unmixed = parse_config({"public": {"source": "pydoc"}})
    assert public_mix(unmixed, PublicData("pydoc", PUBLIC, PUBLIC[:1])) is None


def test_a_share_that_leaves_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="4 public examples per batch of 4"):
        next(PublicMix(PUBLIC, 4).batches(PRIVATE, 4, 0))
