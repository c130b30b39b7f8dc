"""The public corpus: tokenized like the private data, held out by record, capped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fedllm.config import parse_config
from fedllm.data import IGNORE_INDEX, DataError
from fedllm.data.public import build_public_data

MARK = re.compile(r"doc(\d+)x")


def corpus(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "public.txt"
    path.write_text("\n\n".join(f"doc{i}x " + "the quick brown fox " * 6 for i in range(n)))
    return path


def docs(tokenizer: Any, examples: list[Any]) -> set[int]:
    """The documents whose marker appears in the examples' text (blocks joined back)."""
    text = tokenizer.decode([token for e in examples for token in e.input_ids])
    return {int(m) for m in MARK.findall(text)}


def settings(source: str, seed: int = 0, **public: Any) -> Any:
    raw = {"seed": seed, "data": {"source": "chatterbot", "seq_len": 32}}
    return parse_config({**raw, "public": {"source": source, **public}})


def test_held_out_documents_are_not_trained_on(tmp_path: Path, data_tokenizer: Any) -> None:
    path = str(corpus(tmp_path, 40))
    data = build_public_data(settings(path, eval_fraction=0.25), data_tokenizer)
    assert data is not None
    held, trained = docs(data_tokenizer, data.eval), docs(data_tokenizer, data.train)
    assert not held & trained
    assert len(held) >= 9 and len(held | trained) >= 38  # each part may lose its tail
    assert all(len(e) == 32 and e.labels == e.input_ids for e in data.train)  # text packing


def test_the_split_is_seeded(tmp_path: Path, data_tokenizer: Any) -> None:
    path = str(corpus(tmp_path, 40))
    held = [
        docs(data_tokenizer, build_public_data(settings(path, seed), data_tokenizer).eval)  # type: ignore[union-attr]
        for seed in (0, 0, 1)
    ]
    assert held[0] == held[1] != held[2]


def test_caps_are_applied(tmp_path: Path, data_tokenizer: Any) -> None:
    path = str(corpus(tmp_path, 40))
    cfg = settings(path, max_examples=3, max_eval_examples=2, eval_fraction=0.5)
    data = build_public_data(cfg, data_tokenizer)
    assert data is not None and (len(data.train), len(data.eval)) == (3, 2)


def test_no_public_source_gives_no_public_data(data_tokenizer: Any) -> None:
    assert build_public_data(parse_config({}), data_tokenizer) is None


def test_a_chat_corpus_is_formatted_as_chat(data_tokenizer: Any) -> None:
    cfg = parse_config(
        {"data": {"source": "chitchat"}, "public": {"source": "chatterbot", "max_examples": 8}}
    )
    data = build_public_data(cfg, data_tokenizer)
    assert data is not None and len(data.train) == 8
    for example in data.train + data.eval:  # only the assistant's tokens carry a label
        assert IGNORE_INDEX in example.labels and set(example.labels) != {IGNORE_INDEX}


def test_a_one_record_corpus_is_refused(tmp_path: Path, data_tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"public\.source = .* has 1 record"):
        build_public_data(settings(str(corpus(tmp_path, 1))), data_tokenizer)
