"""The byte-level BPE tokenizer trained on pydoc, and a scratch model that uses it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from fedllm.config import ConfigError, ModelConfig, parse_config
from fedllm.data.format import IGNORE_INDEX, collate, encode_chats, pack_texts
from fedllm.model import tokenizer as bpe
from fedllm.model.load import load_base_model, load_tokenizer

VOCAB = 512

TEXTS = [
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n",
    "The  with  statement\tuses a context manager; see PEP 343.",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🙂 and a NUL-free \u00a0 space.",
    "",
    "   leading and trailing whitespace   \n\n",
    "<|im_end|> written by a user is the special token",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fedllm-cache")


@pytest.fixture(scope="module")
def tok(cache: Path) -> PreTrainedTokenizerBase:
    return bpe.bpe_tokenizer(VOCAB, cache / "tokenizers")


@pytest.fixture
def use_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(cache))


def test_has_the_requested_vocab_size(tok: PreTrainedTokenizerBase) -> None:
    assert len(tok) == VOCAB
    assert max(tok.get_vocab().values()) == VOCAB - 1
    assert len(bpe.train_bpe(bpe.corpus_texts("pydoc"), 300)) == 300


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips_text(tok: PreTrainedTokenizerBase, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_merges_frequent_words(tok: PreTrainedTokenizerBase) -> None:
    ids = tok("the function returns", add_special_tokens=False)["input_ids"]
    assert len(ids) < len("the function returns") / 2  # not byte by byte (all ASCII)


def test_training_is_deterministic() -> None:
    texts = bpe.corpus_texts("pydoc")
    a, b = bpe.train_bpe(texts, 700), bpe.train_bpe(texts, 700)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a(TEXTS[0])["input_ids"] == b(TEXTS[0])["input_ids"]


def test_special_tokens_match_smollm2_ids(tok: PreTrainedTokenizerBase) -> None:
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    ids = tok(TEXTS[-1], add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.eos_token_id  # matched as one token, not spelled out


def test_cached_by_corpus_and_vocab_size(cache: Path, tok: PreTrainedTokenizerBase) -> None:
    (entry,) = (cache / "tokenizers").glob(f"bpe-pydoc-{VOCAB}-*")
    assert (entry / "tokenizer.json").is_file()
    assert not list((cache / "tokenizers").glob(".*tmp*"))


def test_cache_hit_does_not_train(
    cache: Path, tok: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*_: object) -> None:
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(bpe, "train_bpe", no_training)
    again = bpe.bpe_tokenizer(VOCAB, cache / "tokenizers")
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_vocab_size_beyond_the_corpus_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"model.vocab_size = 100000 .* choose model.vocab_size"):
        bpe.train_bpe(bpe.corpus_texts("pydoc"), 100_000)
    with pytest.raises(ConfigError, match=r"model.vocab_size = 100 is below 259"):
        bpe.train_bpe(["a b c"], 100)


def test_only_for_scratch_presets() -> None:
    with pytest.raises(ConfigError, match="model.tokenizer = 'bpe'.*pretrained model"):
        parse_config({"model": {"name": "smollm2-135m", "tokenizer": "bpe"}})
    with pytest.raises(ConfigError, match="model.vocab_size = 512 applies only to"):
        parse_config({"model": {"name": "tiny", "vocab_size": 512}})
    with pytest.raises(ConfigError, match="model.vocab_size = 10"):
        parse_config({"model": {"name": "tiny", "tokenizer": "bpe", "vocab_size": 10}})
    assert (
        parse_config({"model": {"name": "tiny", "tokenizer": "bpe"}}).model.bpe_vocab_size == 8192
    )


def test_formats_text_and_chat(tok: PreTrainedTokenizerBase) -> None:
    blocks = pack_texts(["first doc", "second doc"], tok, seq_len=4)
    stream = [t for b in blocks for t in b.input_ids]
    assert stream.count(tok.eos_token_id) >= 1
    chat = [{"role": "user", "content": "What is a tuple?"}, {"role": "assistant", "content": "A"}]
    (example,) = encode_chats([chat], tok, seq_len=64)
    labelled = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(labelled) == "A<|im_end|>"


def test_tiny_preset_runs_forward_with_it(use_cache: None, tok: PreTrainedTokenizerBase) -> None:
    cfg = ModelConfig(name="tiny", tokenizer="bpe", vocab_size=VOCAB)
    loaded = load_tokenizer(cfg)
    assert loaded.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    model = load_base_model(cfg, seed=0)
    assert model.config.vocab_size == VOCAB
    assert model.get_input_embeddings().weight.shape == (VOCAB, 64)
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    batch = collate(
        pack_texts(bpe.corpus_texts("pydoc")[:20], tok, seq_len=32)[:4], tok.pad_token_id
    )
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (4, 32, VOCAB)
    assert abs(float(out.loss) - math.log(VOCAB)) < 0.5  # untrained: near uniform
