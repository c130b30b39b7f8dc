"""The public corpus: text the server holds (and every client may hold a copy of).

It is tokenized like the private data (chat SFT or text packing, the run's
tokenizer and ``data.seq_len``) and split by record into a training part and
a held-out part, so no document is in both. It never shares a source with the
private data (the config refuses it), so the two are disjoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedllm.data.build import encode_records
from fedllm.data.format import Example
from fedllm.data.settings import DataConfig
from fedllm.data.sources import DataError, load_records, record_kind
from fedllm.seeding import derive_seed

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config


@dataclass
class PublicData:
    """The tokenized public corpus.

    Attributes:
        source: the corpus it came from (``public.source``).
        train: training examples (packed blocks or chats).
        eval: held-out examples, from records that ``train`` does not use.
    """

    source: str
    train: Sequence[Example]
    eval: Sequence[Example]


def build_public_data(config: Config, tokenizer: PreTrainedTokenizerBase) -> PublicData | None:
    """Load, split (by record, seeded) and tokenize ``public.source``; None when unset.

    The first ``round(eval_fraction x records)`` records of a seeded shuffle
    (at least one) are held out and tokenized up to ``max_eval_examples``; the
    rest are tokenized, in that shuffled order, up to ``max_examples``.

    Raises:
        DataError: an unusable corpus, or one too small to give a train and an eval example.
    """
    public = config.public
    if public.source is None:
        return None
    records = load_records(DataConfig(source=public.source))
    kind = record_kind(records)
    if len(records) < 2:
        raise DataError(
            f"public.source = {public.source!r} has {len(records)} record; it needs 2 or "
            "more (one to train on, one held out)"
        )
    order = np.random.default_rng(derive_seed(config.seed, "public-split")).permutation(
        len(records)
    )
    n_eval = min(len(records) - 1, max(1, round(public.eval_fraction * len(records))))
    held = [records[i] for i in order[:n_eval]]
    rest = [records[i] for i in order[n_eval:]]
    seq_len = config.data.seq_len
    data = PublicData(
        public.source,
        train=encode_records(kind, rest, tokenizer, seq_len, public.max_examples),
        eval=encode_records(kind, held, tokenizer, seq_len, public.max_eval_examples),
    )
    if not data.train or not data.eval:
        raise DataError(
            f"public.source = {public.source!r} gave {len(data.train)} training and "
            f"{len(data.eval)} held-out example(s) at data.seq_len = {seq_len}; it needs "
            "at least one of each"
        )
    return data
