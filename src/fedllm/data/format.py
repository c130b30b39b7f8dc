"""Records to tokenized examples: chat SFT with assistant-only loss, text packing, collation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fedllm.data.sources import DataError

IGNORE_INDEX = -100
"""Label of a token that takes no loss."""

BATCH_SIZE = 512
"""Texts handed to the tokenizer per call."""


@dataclass
class Example:
    """One tokenized example, unpadded, at most ``seq_len`` tokens.

    Attributes:
        input_ids: token ids.
        labels: same length; the target token id, or ``-100`` where no loss is taken.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_chats(
    chats: Sequence[list[dict[str, str]]],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_examples: int | None = None,
) -> list[Example]:
    """Chat-template each conversation; only assistant tokens carry labels.

    Conversations are rendered with the tokenizer's chat template and
    tokenized in batches; tokens whose text starts inside an assistant span
    (the assistant content and its end-of-turn token) keep their id as label.
    Examples are cut to their first ``seq_len`` tokens; those left with no
    assistant token are dropped.

    Args:
        chats: conversations, each a list of ``{"role", "content"}``.
        tokenizer: a fast tokenizer with a chat template.
        seq_len: most tokens per example.
        max_examples: stop once this many examples are made (no cap if None).

    Returns:
        The examples, in input order, without the dropped ones.
    """
    _check_fast(tokenizer)
    examples: list[Example] = []
    for batch in _batches(chats, BATCH_SIZE):
        examples.extend(e for e in _encode_chat_batch(batch, tokenizer, seq_len) if e is not None)
        if max_examples is not None and len(examples) >= max_examples:
            return examples[:max_examples]
    return examples


def encode_each_chat(
    chats: Sequence[list[dict[str, str]]],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int | None,
) -> list[Example | None]:
    """Like :func:`encode_chats`, but one entry per chat, in input order.

    Args:
        chats: conversations, each a list of ``{"role", "content"}``.
        tokenizer: a fast tokenizer with a chat template.
        seq_len: most tokens per example; None keeps every token.

    Returns:
        Each chat's example, or None where no assistant token is left.
    """
    _check_fast(tokenizer)
    out: list[Example | None] = []
    for batch in _batches(chats, BATCH_SIZE):
        out.extend(_encode_chat_batch(batch, tokenizer, seq_len))
    return out


def _check_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.is_fast:
        raise DataError("chat formatting needs a fast tokenizer (for character offsets)")


def _encode_chat_batch(
    batch: Sequence[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase, seq_len: int | None
) -> list[Example | None]:
    """Render and tokenize one batch of chats; None for a chat left with no assistant token."""
    rendered = render_chats(batch, tokenizer)
    encoded = tokenizer(
        [text for text, _ in rendered],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
    return [
        _label_spans(ids[:seq_len], offsets[:seq_len], spans)
        for ids, offsets, (_, spans) in zip(
            encoded["input_ids"], encoded["offset_mapping"], rendered, strict=True
        )
    ]


def render_chats(
    chats: Sequence[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[str, list[tuple[int, int]]]]:
    """Each chat's templated text and the ``[start, end)`` character spans of its assistant turns.

    The span of assistant message ``i`` runs from the end of ``messages[:i]``
    rendered with a generation prompt to the end of ``messages[:i + 1]``
    rendered, trailing whitespace excluded (so the end-of-turn token is in,
    the newline after it is not). Renders in two batched template calls.

    Raises:
        DataError: a template whose renderings are not prefixes of one another.
    """
    plain: list[list[dict[str, str]]] = list(chats)  # full chats first, then prefixes
    prompted: list[list[dict[str, str]]] = []
    jobs: list[tuple[int, int, int]] = []  # (chat, its prompt, its rendering up to the reply)
    for c, messages in enumerate(chats):
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompted.append(messages[:i])
            if i < len(messages) - 1:
                plain.append(messages[: i + 1])
            jobs.append((c, len(prompted) - 1, c if i == len(messages) - 1 else len(plain) - 1))
    plain_text = _apply_template(tokenizer, plain, generation_prompt=False)
    prompt_text = _apply_template(tokenizer, prompted, generation_prompt=True)
    spans: list[list[tuple[int, int]]] = [[] for _ in chats]
    for c, p, u in jobs:
        full, prompt, upto = plain_text[c], prompt_text[p], plain_text[u]
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise DataError(
                "the chat template does not render conversations as prefixes of one "
                "another; cannot locate the assistant tokens of "
                f"{chats[c][:2]!r}..."
            )
        spans[c].append((len(prompt), len(upto.rstrip())))
    return list(zip(plain_text[: len(chats)], spans, strict=True))


def _apply_template(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    generation_prompt: bool,
) -> list[str]:
    """The chat template applied to each conversation (one batched call)."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=generation_prompt
    )
    if not (isinstance(texts, list) and len(texts) == len(conversations)):
        raise DataError("the tokenizer's chat template did not render to one string per chat")
    return [str(text) for text in texts]


def _label_spans(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> Example | None:
    """Labels = ids for tokens starting inside a span, -100 elsewhere; None if none do."""
    labels = [
        token if any(lo <= start < hi for lo, hi in spans) else IGNORE_INDEX
        for token, (start, _) in zip(ids, offsets, strict=True)
    ]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Example(input_ids=list(ids), labels=labels)


def pack_texts(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_examples: int | None = None,
) -> list[Example]:
    """Tokenize documents, join them with EOS after each, cut into ``seq_len`` blocks.

    Labels equal input ids. The final partial block is dropped unless it is the
    only block, which is then kept shorter.

    Args:
        texts: documents, in the order they are concatenated.
        tokenizer: any tokenizer with an EOS token.
        seq_len: tokens per block.
        max_examples: most blocks; tokenizing stops once they are filled.
    """
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise DataError("packing text needs a tokenizer with an EOS token")
    if not texts:
        return []
    stream: list[int] = []
    for batch in _batches(texts, BATCH_SIZE):
        for ids in tokenizer(list(batch), add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        if max_examples is not None and len(stream) >= max_examples * seq_len:
            break
    full = len(stream) // seq_len
    if max_examples is not None:
        full = min(full, max_examples)
    blocks = [stream[i * seq_len : (i + 1) * seq_len] for i in range(full)]
    if not blocks:
        blocks = [stream]
    return [Example(input_ids=block, labels=list(block)) for block in blocks]


@dataclass
class RecordExamples:
    """Records encoded one example each (:func:`encode_record_chats`,
    :func:`encode_record_texts`).

    Attributes:
        examples: the examples, in record order (a chat left with no assistant token
            within ``seq_len`` makes none).
        truncated: for each example, whether its record was longer than ``seq_len``
            tokens and was cut.
    """

    examples: list[Example]
    truncated: list[bool]


def encode_record_chats(
    chats: Sequence[list[dict[str, str]]],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_examples: int | None = None,
) -> RecordExamples:
    """The examples of :func:`encode_chats` (one per chat, cut to ``seq_len`` tokens, the
    same ids and labels), with which chats were cut.

    Args:
        chats: conversations, each a list of ``{"role", "content"}``.
        tokenizer: a fast tokenizer with a chat template.
        seq_len: most tokens per example.
        max_examples: stop once this many examples are made (no cap if None).
    """
    _check_fast(tokenizer)
    out = RecordExamples([], [])
    for batch in _batches(chats, BATCH_SIZE):
        for whole in _encode_chat_batch(batch, tokenizer, None):
            cut = whole is not None and len(whole) > seq_len
            example = _cut(whole, seq_len) if cut else whole
            if example is None:
                continue
            out.examples.append(example)
            out.truncated.append(cut)
            if max_examples is not None and len(out.examples) >= max_examples:
                return out
    return out


def _cut(example: Example | None, seq_len: int) -> Example | None:
    """The first ``seq_len`` tokens of ``example``; None if none of them carries a label."""
    if example is None:
        return None
    labels = example.labels[:seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Example(input_ids=example.input_ids[:seq_len], labels=labels)


def encode_record_texts(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_examples: int | None = None,
) -> RecordExamples:
    """One example per document, never packed with another: its tokens then EOS, cut
    to ``seq_len`` tokens; labels equal input ids.

    A document is cut (``truncated``) when its tokens and EOS exceed ``seq_len``.

    Args:
        texts: documents, in order.
        tokenizer: any tokenizer with an EOS token.
        seq_len: most tokens per example.
        max_examples: most examples; tokenizing stops once they are made.
    """
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise DataError("encoding text needs a tokenizer with an EOS token")
    out = RecordExamples([], [])
    for batch in _batches(texts, BATCH_SIZE):
        for ids in tokenizer(list(batch), add_special_tokens=False)["input_ids"]:
            block = [*ids, eos]
            out.truncated.append(len(block) > seq_len)
            block = block[:seq_len]
            out.examples.append(Example(input_ids=block, labels=list(block)))
            if max_examples is not None and len(out.examples) >= max_examples:
                return out
    return out


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    Returns:
        ``input_ids`` (pad_id on padding), ``attention_mask`` (1 real, 0 padding)
        and ``labels`` (-100 on padding), each a ``long`` tensor of shape
        ``[batch, longest]``.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        if len(example.labels) != n:
            raise ValueError(f"example {row}: {n} input ids but {len(example.labels)} labels")
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
