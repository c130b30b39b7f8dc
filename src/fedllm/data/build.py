"""From a :class:`DataConfig` to tokenized per-client train/eval splits and a test split."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedllm.components import PARTITIONERS
from fedllm.config import DataConfig
from fedllm.data.format import IGNORE_INDEX, Example, encode_chats, pack_texts
from fedllm.data.sources import DataError, Record, load_records, record_kind

Encoder = Callable[[Sequence[Record], int | None], list[Example]]
"""Records (and an optional cap on examples) -> tokenized examples."""

_STAGE_TEST = 1
_STAGE_CLIENT = 2


@dataclass
class ClientData:
    """One client's tokenized data.

    Attributes:
        client_id: the client's id (filesystem-safe).
        train: training examples.
        eval: held-out examples of the same client.
    """

    client_id: str
    train: list[Example]
    eval: list[Example]


@dataclass
class FederatedData:
    """Every client's data and the global test split.

    Attributes:
        clients: client id -> data, in sorted id order.
        test: the global test split, disjoint from every client's records.
        dropped: client id -> why it was left out (too few examples...).
    """

    clients: dict[str, ClientData]
    test: list[Example]
    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready sizes: clients, examples per client, test size, tokens.

        ``tokens`` counts input tokens, ``loss_tokens`` tokens with a label.
        """
        per_client = {
            cid: {
                "train": len(c.train),
                "eval": len(c.eval),
                "train_tokens": _tokens(c.train),
                "eval_tokens": _tokens(c.eval),
            }
            for cid, c in self.clients.items()
        }
        train = [e for c in self.clients.values() for e in c.train]
        return {
            "num_clients": len(self.clients),
            "clients": per_client,
            "train_examples": len(train),
            "eval_examples": sum(len(c.eval) for c in self.clients.values()),
            "test_examples": len(self.test),
            "train_tokens": _tokens(train),
            "train_loss_tokens": sum(
                sum(label != IGNORE_INDEX for label in e.labels) for e in train
            ),
            "test_tokens": _tokens(self.test),
            "dropped": dict(self.dropped),
        }


def build_federated_data(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> FederatedData:
    """Load, split, partition and tokenize the data of a run.

    Steps: load records; hold out ``test_fraction`` as the global test split;
    partition the rest; per client, subsample to ``max_examples_per_client``,
    split off ``eval_fraction`` for eval (at least one example each side) and
    tokenize (chat SFT or text packing); drop clients below
    ``min_client_examples``. Only kept clients' records are tokenized.

    Args:
        cfg: the data section of the config.
        tokenizer: the model's tokenizer (fast, with a chat template for chat data).
        seed: fixes every random choice; same seed, same data.

    Raises:
        DataError: unusable input, or no client left (with the reasons).
    """
    seed = seed % 2**63
    records = load_records(cfg)
    encode = _encoder(record_kind(records), tokenizer, cfg.seq_len)
    test_rows, pool_rows = _hold_out(len(records), cfg.test_fraction, _rng(seed, _STAGE_TEST))
    pool = [records[i] for i in pool_rows]
    partition = PARTITIONERS.get(cfg.partition)(pool, cfg, seed)
    _check_partition(partition, len(pool), cfg.partition)

    clients: dict[str, ClientData] = {}
    dropped: dict[str, str] = {}
    for cid in sorted(partition):
        built = _build_client(cid, [pool[i] for i in partition[cid]], cfg, encode, seed)
        if isinstance(built, str):
            dropped[cid] = built
        else:
            clients[cid] = built
    if not clients:
        reasons = "; ".join(f"{cid}: {why}" for cid, why in list(dropped.items())[:8])
        raise DataError(
            f"no client left after building {cfg.source!r} with partition "
            f"{cfg.partition!r} ({len(partition)} partitions): {reasons or 'no partitions'}"
        )
    test = encode([records[i] for i in test_rows], cfg.max_test_examples) if test_rows else []
    return FederatedData(clients=clients, test=test, dropped=dropped)


def _build_client(
    cid: str, records: Sequence[Record], cfg: DataConfig, encode: Encoder, seed: int
) -> ClientData | str:
    """The client's tokenized splits, or why the client is dropped."""
    order = _rng(seed, _STAGE_CLIENT, zlib.crc32(cid.encode("utf-8"))).permutation(len(records))
    cap = cfg.max_examples_per_client
    if cap is not None:
        order = order[:cap]
    if len(order) < 2:
        return f"{len(order)} record(s); a client needs 2 (one train, one eval)"
    n_eval = max(1, round(cfg.eval_fraction * len(order)))
    if cfg.max_eval_examples is not None:
        n_eval = min(n_eval, cfg.max_eval_examples)
    n_eval = min(n_eval, len(order) - 1)
    evals = encode([records[i] for i in order[:n_eval]], cfg.max_eval_examples)
    train_cap = None if cap is None else max(1, cap - len(evals))
    train = encode([records[i] for i in order[n_eval:]], train_cap)
    if not evals and len(train) > 1:
        evals = [train.pop()]
    total = len(train) + len(evals)
    if not train or not evals:
        return f"{total} example(s) after tokenizing; needs one train and one eval"
    if total < cfg.min_client_examples:
        return f"{total} examples < data.min_client_examples = {cfg.min_client_examples}"
    return ClientData(client_id=cid, train=train, eval=evals)


def _encoder(kind: str, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> Encoder:
    """Chat records -> SFT examples; text records -> packed blocks."""

    def encode(records: Sequence[Record], cap: int | None) -> list[Example]:
        if kind == "chat":
            return encode_chats([r["messages"] for r in records], tokenizer, seq_len, cap)
        return pack_texts([r["text"] for r in records], tokenizer, seq_len, cap)

    return encode


def _hold_out(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Shuffled test rows and sorted remaining rows; at least one row stays out of test."""
    if fraction <= 0 or n < 2:
        return [], list(range(n))
    n_test = min(n - 1, max(1, round(fraction * n)))
    order = rng.permutation(n)
    return order[:n_test].tolist(), sorted(order[n_test:].tolist())


def _check_partition(partition: dict[str, list[int]], n: int, name: str) -> None:
    seen: set[int] = set()
    for cid, rows in partition.items():
        for row in rows:
            if not 0 <= row < n:
                raise DataError(f"partitioner {name!r} gave {cid} index {row}, outside 0..{n - 1}")
            if row in seen:
                raise DataError(f"partitioner {name!r} assigned index {row} twice")
            seen.add(row)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _tokens(examples: Sequence[Example]) -> int:
    return sum(len(e.input_ids) for e in examples)
