"""From a :class:`DataConfig` to tokenized per-client train/eval splits and a test split."""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedllm.components import PARTITIONERS
from fedllm.data.canary import (
    CHAT_PROMPT,
    Canary,
    canary_clients,
    canary_record,
    count_canary_records,
    draw_canaries,
    with_canaries,
)
from fedllm.data.compact import Examples
from fedllm.data.format import (
    Example,
    RecordExamples,
    encode_chats,
    encode_each_chat,
    encode_record_chats,
    encode_record_texts,
    pack_texts,
)
from fedllm.data.settings import DataConfig, LongRecords
from fedllm.data.sources import (
    FILE_SUFFIXES,
    POISONED_KEY,
    DataError,
    Record,
    load_file,
    load_records,
    record_kind,
    record_text,
)

Encoder = Callable[[Sequence[Record], int | None], Examples]
"""Records (and an optional cap on examples) -> tokenized examples, compact."""

RecordEncoder = Callable[[Sequence[Record], int | None], RecordExamples]
"""Records (and an optional cap) -> one example per record, and which were cut."""

TrainTransform = Callable[[str, Mapping[str, list[Record]]], dict[str, list[Record]]]
"""(record kind, client id -> training records) -> the training records to use instead,
for the same clients: a change made before tokenizing (a simulated data attack's
poisoning). Held-out and test records never reach it."""

_STAGE_TEST = 1
_STAGE_CLIENT = 2


@dataclass
class ClientData:
    """One client's tokenized data.

    Attributes:
        client_id: the client's id (filesystem-safe).
        train: training examples.
        eval: held-out examples of the same client.
        truncated: training records cut to ``seq_len``, counted when every training
            example is one record (``per_record``); None: not counted (text packed, or
            chats outside DP-SGD).
    """

    client_id: str
    train: Sequence[Example]
    eval: Sequence[Example]
    truncated: int | None = None


@dataclass
class FederatedData:
    """Every client's data and the global test split.

    Attributes:
        clients: client id -> data, in sorted id order.
        test: the global test split, disjoint from every client's records.
        dropped: client id -> why it was left out (too few examples...).
        canaries: the canaries inserted (and the controls), when ``[privacy]`` asks.
        poisoned: client id -> its training records a simulated data attack changed
            (counted before tokenizing; only clients with one or more).
    """

    clients: dict[str, ClientData]
    test: Sequence[Example]
    dropped: dict[str, str] = field(default_factory=dict)
    canaries: list[Canary] = field(default_factory=list)
    poisoned: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready sizes: clients, examples per client, test size, tokens.

        ``tokens`` counts input tokens, ``loss_tokens`` tokens with a label;
        ``truncated_records`` (only when every training example is one record) counts
        the training records cut to ``seq_len``; ``poisoned`` (only when a data attack
        changed some) counts the changed training records per client, never their text.
        """
        per_client = {
            cid: {
                "train": len(c.train),
                "eval": len(c.eval),
                "train_tokens": _tokens(c.train),
                "eval_tokens": _tokens(c.eval),
                **({} if c.truncated is None else {"truncated": c.truncated}),
            }
            for cid, c in self.clients.items()
        }
        counted = [c.truncated for c in self.clients.values() if c.truncated is not None]
        truncated = {"truncated_records": sum(counted)} if counted else {}
        train = Examples.concat([c.train for c in self.clients.values()])
        canaries = {"canaries": [c.to_json() for c in self.canaries]} if self.canaries else {}
        poisoned = {"poisoned": dict(self.poisoned)} if self.poisoned else {}
        return {
            "num_clients": len(self.clients),
            "clients": per_client,
            "train_examples": len(train),
            "eval_examples": sum(len(c.eval) for c in self.clients.values()),
            "test_examples": len(self.test),
            "train_tokens": _tokens(train),
            "train_loss_tokens": train.label_tokens,
            "test_tokens": _tokens(self.test),
            "dropped": dict(self.dropped),
            **truncated,
            **canaries,
            **poisoned,
        }


@dataclass
class RecordSplit:
    """One client's raw records, split as :func:`build_federated_data` splits them.

    Attributes:
        client_id: the client's id (filesystem-safe).
        train: training records, in seeded order.
        eval: held-out records, in seeded order (the order examples are evaluated in).
    """

    client_id: str
    train: list[Record]
    eval: list[Record]


@dataclass
class ClientRecords:
    """Every client's raw records and the raw global test split (nothing tokenized).

    Attributes:
        kind: ``"chat"`` (records hold ``messages``) or ``"text"``.
        clients: client id -> its split, in sorted id order.
        test: the global test split's records.
        dropped: client id -> why it was left out (fewer than 2 records).
        canaries: the canaries inserted into training splits (records carrying a
            ``canary`` field) and the controls, when ``[privacy]`` asks for them.
    """

    kind: str
    clients: dict[str, RecordSplit]
    test: list[Record]
    dropped: dict[str, str] = field(default_factory=dict)
    canaries: list[Canary] = field(default_factory=list)

    @property
    def poisoned(self) -> dict[str, int]:
        """Client id -> its training records carrying :data:`POISONED_KEY` (those with
        one or more)."""
        counts = {cid: sum(POISONED_KEY in r for r in s.train) for cid, s in self.clients.items()}
        return {cid: n for cid, n in counts.items() if n}


def build_federated_data(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    per_record: LongRecords | None = None,
    transform: TrainTransform | None = None,
) -> FederatedData:
    """Load, split, partition and tokenize the data of a run.

    Steps: :func:`build_client_records` (load records; hold out
    ``test_fraction`` as the global test split; partition the rest; per client,
    subsample to ``max_examples_per_client`` and split off ``eval_fraction``
    for eval), then tokenize each split (chat SFT or text packing) and drop
    clients below ``min_client_examples``. Only kept clients' records are
    tokenized.

    With ``per_record`` (record-level DP-SGD, ``privacy.dp = 'local'``) every training
    example is exactly one record: text is not packed but encoded one record a row
    (its tokens, then EOS), and a record longer than ``seq_len`` tokens is cut with a
    warning counting them (``"truncate"``) or refused (``"refuse"``). Held-out and test
    splits are encoded as without it (they are never trained on).

    Args:
        cfg: the data section of the config.
        tokenizer: the model's tokenizer (fast, with a chat template for chat data).
        seed: fixes every random choice; same seed, same data.
        per_record: one record per training example, and what to do with a longer
            one; None: text packed into ``seq_len`` blocks.
        transform: changes the clients' training records before anything is
            tokenized (:func:`build_client_records`); None: none.

    Raises:
        DataError: unusable input, no client left (with the reasons), or records
            longer than ``seq_len`` under ``per_record = "refuse"``.
    """
    raw = build_client_records(cfg, seed, transform)
    encode = _encoder(raw.kind, tokenizer, cfg.seq_len, cfg.format == "text")
    each = _record_encoder(raw.kind, tokenizer, cfg, per_record)
    if raw.canaries and raw.canaries[0].kind == "chat":
        _check_canary_fits(raw.canaries[0], tokenizer, cfg.seq_len)
    clients: dict[str, ClientData] = {}
    dropped = dict(raw.dropped)
    for cid, split in raw.clients.items():
        built = _encode_client(split, cfg, encode, each)
        if isinstance(built, str):
            dropped[cid] = built
        else:
            clients[cid] = built
    dropped = dict(sorted(dropped.items()))
    if not clients:
        raise _no_client_left(cfg, len(raw.clients) + len(raw.dropped), dropped)
    lost = sorted({c.client for c in raw.canaries if c.client in dropped})
    if lost:
        raise DataError(
            f"privacy.canary_clients: {', '.join(f'{cid} ({dropped[cid]})' for cid in lost)} "
            "was dropped after tokenizing, with its canaries; choose another client"
        )
    if per_record is not None:
        _report_truncated(list(clients.values()), cfg.seq_len, per_record)
    test = encode(raw.test, cfg.max_test_examples) if raw.test else Examples.pack([])
    poisoned = {cid: n for cid, n in raw.poisoned.items() if cid in clients}
    return FederatedData(clients, test, dropped, raw.canaries, poisoned)


def build_client_records(
    cfg: DataConfig, seed: int, transform: TrainTransform | None = None
) -> ClientRecords:
    """Every client's raw (untokenized) train/eval records and the raw test split.

    The partition and the per-client split are exactly those
    :func:`build_federated_data` tokenizes (it is built on this function).
    Clients with fewer than 2 records are dropped here; tokenizing can drop
    more (examples with no assistant token left within ``seq_len``).

    Args:
        cfg: the data section of the config.
        seed: fixes every random choice; same seed, same split.
        transform: applied to the kept clients' training records, before canaries are
            inserted (a canary is never poisoned); held-out and test records never reach
            it.

    Raises:
        DataError: unusable input, no client with 2 records or more, or a
            ``transform`` that returns other clients than it was given.
    """
    seed = seed % 2**63
    records = load_records(cfg)
    kind = record_kind(records)
    test_rows, pool_rows = _hold_out(len(records), cfg.test_fraction, _rng(seed, _STAGE_TEST))
    pool = [records[i] for i in pool_rows]
    partition = PARTITIONERS.get(cfg.partition)(pool, cfg, seed)
    _check_partition(partition, len(pool), cfg.partition)

    clients: dict[str, RecordSplit] = {}
    dropped: dict[str, str] = {}
    for cid in sorted(partition):
        split = _split_client(cid, [pool[i] for i in partition[cid]], cfg, seed)
        if isinstance(split, str):
            dropped[cid] = split
        else:
            clients[cid] = split
    if not clients:
        raise _no_client_left(cfg, len(partition), dropped)
    test = [records[i] for i in test_rows]
    if transform is not None:
        clients = _transformed(kind, clients, transform)
    canaries = _insert_canaries(cfg, kind, clients, seed)
    return ClientRecords(kind=kind, clients=clients, test=test, dropped=dropped, canaries=canaries)


def load_test_records(cfg: DataConfig, seed: int) -> list[Record]:
    """The global test split's raw records, in the order :func:`build_client_records`
    holds them out (the order :func:`build_federated_data` tokenizes them in), without
    partitioning or tokenizing anything."""
    records = load_records(cfg)
    test_rows, _ = _hold_out(len(records), cfg.test_fraction, _rng(seed % 2**63, _STAGE_TEST))
    return [records[i] for i in test_rows]


def _transformed(
    kind: str, clients: dict[str, RecordSplit], transform: TrainTransform
) -> dict[str, RecordSplit]:
    """``clients`` with ``transform``'s training records (held-out records as they were).

    Raises:
        DataError: the transform returned other clients than it was given.
    """
    train = transform(kind, {cid: list(split.train) for cid, split in clients.items()})
    if set(train) != set(clients):
        raise DataError(
            f"a training-record transform returned clients {sorted(train)}, "
            f"but was given {sorted(clients)}"
        )
    return {cid: RecordSplit(cid, train[cid], split.eval) for cid, split in clients.items()}


def _insert_canaries(
    cfg: DataConfig, kind: str, clients: dict[str, RecordSplit], seed: int
) -> list[Canary]:
    """Draw ``cfg.canary_spec``'s canaries and put them into their clients' training
    records, in place (held-out records are never touched); the canaries drawn.

    Raises:
        ConfigError: ``privacy.canary_clients`` names a client the federation lacks.
    """
    spec = cfg.canary_spec
    if spec is None or spec.count == 0:
        return []
    chosen = canary_clients(spec, list(clients))
    encoded_as = "chat" if kind == "chat" and cfg.format != "text" else "text"
    canaries = draw_canaries(spec, chosen, seed, encoded_as)
    for cid in chosen:
        split = clients[cid]
        train = with_canaries(split.train, canaries, cid, seed)
        clients[cid] = RecordSplit(client_id=cid, train=train, eval=split.eval)
    return canaries


def build_own_client(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    path: str,
    client_id: str,
    seed: int,
    per_record: LongRecords | None = None,
) -> ClientData:
    """One client's data from its own file (a Flower node's ``data=...``), split and
    tokenized as :func:`build_federated_data` splits and tokenizes a partition.

    Nothing is held out as a global test split: the whole file is the client's
    (``max_examples_per_client``, ``eval_fraction`` and ``min_client_examples`` apply);
    ``per_record`` as in :func:`build_federated_data`.

    Raises:
        DataError: the file is missing or unreadable, it leaves the client too few
            examples (with why), or it holds records longer than ``seq_len`` under
            ``per_record = "refuse"``.
    """
    if Path(path).suffix not in FILE_SUFFIXES:
        raise DataError(
            f"node data {path}: must be a {' or '.join(FILE_SUFFIXES)} file "
            "(one chat or text record per line)"
        )
    records = load_file(path)
    kind = record_kind(records)
    split = _split_client(client_id, records, cfg, seed % 2**63)
    if isinstance(split, str):
        raise DataError(f"node data {path}: {split}")
    encode = _encoder(kind, tokenizer, cfg.seq_len, cfg.format == "text")
    built = _encode_client(split, cfg, encode, _record_encoder(kind, tokenizer, cfg, per_record))
    if isinstance(built, str):
        raise DataError(f"node data {path}: {built}")
    if per_record is not None:
        _report_truncated([built], cfg.seq_len, per_record)
    return built


def _split_client(
    cid: str, records: Sequence[Record], cfg: DataConfig, seed: int
) -> RecordSplit | str:
    """The client's records in seeded order, capped and split, or why it is dropped."""
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
    return RecordSplit(
        client_id=cid,
        train=[records[i] for i in order[n_eval:]],
        eval=[records[i] for i in order[:n_eval]],
    )


def _check_canary_fits(canary: Canary, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> None:
    """Refuse chat canaries that ``seq_len`` would cut (the secret comes last).

    Raises:
        DataError: naming the canary's length in tokens and ``data.seq_len``.
    """
    example = encode_each_chat([canary_record(canary.text, "chat")["messages"]], tokenizer, None)
    length = len(example[0].input_ids) if example[0] is not None else 0
    if length > seq_len:
        raise DataError(
            f"a canary chat ({canary.text!r} as the reply to {CHAT_PROMPT!r}, with the chat "
            f"template) takes {length} tokens, more than data.seq_len = {seq_len}, which "
            "would cut its secret: raise data.seq_len or shorten privacy.canary_template"
        )


def _encode_client(
    split: RecordSplit, cfg: DataConfig, encode: Encoder, each: RecordEncoder | None = None
) -> ClientData | str:
    """The client's tokenized splits (training examples one per record with ``each``),
    or why the client is dropped."""
    cap = cfg.max_examples_per_client
    evals = encode(split.eval, cfg.max_eval_examples)
    # inserted canaries come on top of the cap: none is cut
    train_cap = (
        None if cap is None else max(1, cap - len(evals)) + count_canary_records(split.train)
    )
    cut: list[bool] | None = None
    if each is None:
        train = encode(split.train, train_cap)
    else:
        records = each(split.train, train_cap)
        train, cut = Examples.pack(records.examples), records.truncated
    if not evals and len(train) > 1:
        train, evals = train[:-1], train[-1:]
    total = len(train) + len(evals)
    if not train or not evals:
        return f"{total} example(s) after tokenizing; needs one train and one eval"
    if total < cfg.min_client_examples:
        return f"{total} examples < data.min_client_examples = {cfg.min_client_examples}"
    truncated = None if cut is None else sum(cut[: len(train)])
    return ClientData(client_id=split.client_id, train=train, eval=evals, truncated=truncated)


def _report_truncated(clients: list[ClientData], seq_len: int, per_record: LongRecords) -> None:
    """Warn how many training records were cut to ``seq_len``, or refuse them.

    Raises:
        DataError: records were cut and ``per_record`` is ``"refuse"``.
    """
    cut = sum(c.truncated or 0 for c in clients)
    if cut == 0:
        return
    records = sum(len(c.train) for c in clients)
    if per_record == "refuse":
        raise DataError(
            f"privacy.long_records = 'refuse': {cut} of {records} training records are "
            f"longer than data.seq_len = {seq_len} tokens (with DP-SGD each is one example); "
            "raise data.seq_len, or set privacy.long_records = 'truncate' to cut them"
        )
    warnings.warn(
        f"{cut} of {records} training records are longer than data.seq_len = {seq_len} "
        "tokens and were truncated to it (with DP-SGD each record is one example); raise "
        "data.seq_len to keep them whole",
        UserWarning,
        stacklevel=3,
    )


def _no_client_left(cfg: DataConfig, partitions: int, dropped: dict[str, str]) -> DataError:
    reasons = "; ".join(f"{cid}: {why}" for cid, why in list(dropped.items())[:8])
    return DataError(
        f"no client left after building {cfg.source!r} with partition "
        f"{cfg.partition!r} ({partitions} partitions): {reasons or 'no partitions'}"
    )


def encode_records(
    kind: str,
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    cap: int | None,
    as_text: bool = False,
) -> Examples:
    """Chat records -> SFT examples (unless ``as_text``); text -> packed ``seq_len`` blocks.

    ``as_text`` packs chat records as plain text too (messages joined by
    newlines), with loss on every token. Returned compact
    (:class:`~fedllm.data.compact.Examples`), so no list of them outlives the call.
    """
    if kind == "chat" and not as_text:
        return Examples.pack(
            encode_chats([r["messages"] for r in records], tokenizer, seq_len, cap)
        )
    return Examples.pack(pack_texts([record_text(r) for r in records], tokenizer, seq_len, cap))


def encode_each_record(
    kind: str,
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    cap: int | None,
    as_text: bool = False,
) -> RecordExamples:
    """One example per record, never packed, cut to ``seq_len`` tokens: chat records as
    the SFT examples of :func:`encode_records` (unless ``as_text``), text (or chats
    joined as text) as the record's tokens then EOS, loss on every token."""
    if kind == "chat" and not as_text:
        return encode_record_chats([r["messages"] for r in records], tokenizer, seq_len, cap)
    return encode_record_texts([record_text(r) for r in records], tokenizer, seq_len, cap)


def _record_encoder(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    per_record: LongRecords | None,
) -> RecordEncoder | None:
    """:func:`encode_each_record` with everything but the records and the cap fixed;
    None without ``per_record``."""
    if per_record is None:
        return None

    def encode(records: Sequence[Record], cap: int | None) -> RecordExamples:
        return encode_each_record(kind, records, tokenizer, cfg.seq_len, cap, cfg.format == "text")

    return encode


def _encoder(kind: str, tokenizer: PreTrainedTokenizerBase, seq_len: int, as_text: bool) -> Encoder:
    """:func:`encode_records` with everything but the records and the cap fixed."""

    def encode(records: Sequence[Record], cap: int | None) -> Examples:
        return encode_records(kind, records, tokenizer, seq_len, cap, as_text)

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
    if isinstance(examples, Examples):
        return examples.tokens
    return sum(len(e.input_ids) for e in examples)
