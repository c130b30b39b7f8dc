"""Public examples mixed into every client micro-batch (every client holds the corpus)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedllm.algorithms.public_mix.mix import PublicMix
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.data import Example


class MixedBatches(TrainHook):
    """Draws the batches from :meth:`PublicMix.batches`."""

    def __init__(self, mix: PublicMix) -> None:
        self.mix = mix

    def batches(
        self, examples: Sequence[Example], batch_size: int, seed: int
    ) -> Iterator[list[Example]]:
        return self.mix.batches(examples, batch_size, seed)


class PublicMixPlugin(ClientPlugin):
    """Every batch holds ``mix.per_batch`` public examples (see
    :mod:`fedllm.algorithms.public_mix.mix`).

    Args:
        mix: the public examples and their share of a batch.
    """

    name = "public_mix"

    def __init__(self, mix: PublicMix) -> None:
        self.mix = mix

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        return MixedBatches(self.mix)
