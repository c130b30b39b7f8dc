"""A run's tokenizer and data, built in a forked child from the moment its config is read.

``fedllm run`` starts this before it imports the training stack, so the child's
work (loading the tokenizer, reading the corpus, partitioning, tokenizing) overlaps
the parent's imports and model load; :func:`fedllm.federation.setup.prepare` takes
the result. The tokenizer comes back with the data (pickled: about 1.5 MB for
SmolLM2's), so the parent never loads it itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from fedllm.data.apart import Pending, start_apart

if TYPE_CHECKING:
    from fedllm.config import Config
    from fedllm.data import FederatedData
    from fedllm.data.build import TrainTransform
    from fedllm.data.public import PublicData
    from fedllm.data.sources import Record


@dataclass
class RunData:
    """What :func:`build_run_data` makes.

    Attributes:
        tokenizer: the model's tokenizer (with a pad token).
        data: the federation's tokenized data.
        public: the public corpus (``[public]``), or None.
    """

    tokenizer: Any
    data: FederatedData
    public: PublicData | None


def build_run_data(config: Config) -> RunData:
    """Load the tokenizer and build the federation's data and public corpus."""
    from fedllm.data import build_federated_data
    from fedllm.data.public import build_public_data
    from fedllm.model.load import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    data = build_federated_data(
        config.data,
        tokenizer,
        config.seed,
        per_record=config.privacy.per_record(),
        transform=train_transform(config),
    )
    return RunData(tokenizer, data, build_public_data(config, tokenizer))


def train_transform(config: Config) -> TrainTransform | None:
    """What the algorithms ``config`` turns on change in the clients' training records
    before tokenizing (a simulated data attack's poisoning), one after the other; None:
    nothing. An algorithm declares it as ``train_records(config)``."""
    from fedllm.components import active_algorithms

    found = [
        make(config)
        for _, factory in active_algorithms(config)
        if (make := getattr(factory, "train_records", None)) is not None
    ]
    if len(found) <= 1:
        return found[0] if found else None

    def chained(kind: str, train: Mapping[str, list[Record]]) -> dict[str, list[Record]]:
        out = dict(train)
        for transform in found:
            out = transform(kind, out)
        return out

    return chained


def start_run_data(config: Config) -> Pending[RunData]:
    """:func:`build_run_data` started in a forked child (where forking is not possible,
    run in this process when its result is asked for)."""
    return start_apart(partial(build_run_data, config))
