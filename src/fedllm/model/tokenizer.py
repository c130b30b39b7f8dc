"""A byte-level BPE tokenizer trained on a public corpus, for models trained from scratch.

The tokenizer is trained with the ``tokenizers`` library (GPT-2 style
byte-level pre-tokenisation, so any text encodes and decodes back exactly) and
wrapped as a transformers ``PreTrainedTokenizerFast``, so the data pipeline
uses it as it uses SmolLM2's. Its special tokens sit at SmolLM2's ids:
``<|endoftext|>`` (0, unknown), ``<|im_start|>`` (1, begin of sequence) and
``<|im_end|>`` (2, end of sequence and padding; packing puts it after each
document), and its chat template is ChatML, as SmolLM2's, so chat data
formats too.

Training is deterministic. The result is cached in
``<cache>/bpe-<corpus>-<vocab size>-<corpus digest>``: a changed corpus (the
pydoc topics differ between Python versions) gets a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fedllm.model.cachefiles import build_once
from fedllm.settings import ConfigError

UNK_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)
"""The special tokens, in id order (0, 1, 2: SmolLM2's ids)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as SmolLM2's template without its default system message."""

DEFAULT_CORPUS = "pydoc"
"""The data source the tokenizer is trained on."""

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
"""The 256 byte tokens and the special tokens: a tokenizer without any merge."""

_RECIPE_VERSION = "1"
"""Part of the cache key: bump it when the training recipe changes."""


def train_bpe(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` tokens on ``texts``.

    Args:
        texts: the training documents.
        vocab_size: tokens in all, special tokens and the 256 bytes included.

    Raises:
        ConfigError: ``vocab_size`` below :data:`MIN_VOCAB_SIZE`, or more tokens
            than the texts give (every word already one token).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"config error: model.vocab_size = {vocab_size} is below {MIN_VOCAB_SIZE} "
            "(256 bytes + 3 special tokens); choose a larger vocab_size"
        )
    core = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    got = core.get_vocab_size()
    if got < vocab_size:
        raise ConfigError(
            f"config error: model.vocab_size = {vocab_size} is more than the corpus gives: "
            f"BPE training ran out of merges at {got} tokens; choose model.vocab_size <= {got}"
        )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def corpus_texts(corpus: str) -> list[str]:
    """The documents of data source ``corpus`` (text records; chats as their messages)."""
    from fedllm.data.settings import DataConfig
    from fedllm.data.sources import load_records

    texts: list[str] = []
    for record in load_records(DataConfig(source=corpus)):
        if "text" in record:
            texts.append(record["text"])
        else:
            texts.extend(message["content"] for message in record["messages"])
    return texts


def bpe_tokenizer(
    vocab_size: int, cache: Path, corpus: str = DEFAULT_CORPUS
) -> PreTrainedTokenizerFast:
    """The BPE tokenizer of ``vocab_size`` tokens on ``corpus``, trained on first use.

    A new tokenizer is saved into a temporary directory inside ``cache`` and
    renamed into place, so an interrupted or concurrent run never leaves a
    partial entry.

    Args:
        vocab_size: tokens in all.
        cache: the directory holding trained tokenizers.
        corpus: a registered data source name.

    Raises:
        ConfigError: a ``vocab_size`` the corpus cannot give.
        IncompleteCacheError: the entry exists without its ``tokenizer.json``.
    """
    texts = corpus_texts(corpus)

    def train_and_save(out: Path) -> None:
        train_bpe(texts, vocab_size).save_pretrained(out)

    final = build_once(
        cache / f"bpe-{corpus}-{vocab_size}-{_digest(texts)}", train_and_save, "tokenizer.json"
    )
    loaded: PreTrainedTokenizerFast = PreTrainedTokenizerFast.from_pretrained(final)
    return loaded


def _digest(texts: Sequence[str]) -> str:
    """12 hex digits identifying the corpus and the training recipe."""
    hasher = hashlib.sha256(_RECIPE_VERSION.encode())
    for text in texts:
        hasher.update(len(text).to_bytes(8, "little"))
        hasher.update(text.encode("utf-8"))
    return hasher.hexdigest()[:12]
