"""Data sources: the built-in corpora and user files, with their errors."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fedllm.components import DATA_SOURCES
from fedllm.config import DataConfig
from fedllm.data.sources import (
    DataError,
    Record,
    chunk_paragraphs,
    load_file,
    load_records,
    record_kind,
)
from fedllm.registry import UnknownComponentError


def _is_pair(record: dict[str, object]) -> bool:
    messages = record["messages"]
    assert isinstance(messages, list)
    return [m["role"] for m in messages] == ["user", "assistant"] and all(
        isinstance(m["content"], str) for m in messages
    )


def test_builtin_sources_are_registered() -> None:
    assert {"chitchat", "chatterbot", "pydoc"} <= set(DATA_SOURCES.names())


@pytest.fixture(scope="module")
def chitchat_raw() -> dict[str, Any]:
    spec = importlib.util.find_spec("chitchat_dataset")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    raw: dict[str, Any] = json.loads((folder / "dataset.json").read_text())
    return raw


@pytest.fixture(scope="module")
def chitchat_records() -> list[Record]:
    return load_records(DataConfig(source="chitchat"))


def test_chitchat_one_record_per_reply_grouped_by_sender(
    chitchat_raw: dict[str, Any], chitchat_records: list[Record]
) -> None:
    assert 6500 <= len(chitchat_raw) <= 7500  # conversations
    replies = sum(len(conv["messages"]) - 1 for conv in chitchat_raw.values())
    assert len(chitchat_records) == replies
    # about 3k conversations are a single unanswered turn and give no record
    answered = sum(len(conv["messages"]) > 1 for conv in chitchat_raw.values())
    assert len({r["conversation"] for r in chitchat_records}) == answered
    assert all(_is_pair(r) for r in chitchat_records[:1000])
    sizes = sorted(Counter(r["user"] for r in chitchat_records).values(), reverse=True)
    assert len(sizes) > 100
    assert sizes[0] > 50 * sizes[len(sizes) // 2]  # a power law: a few users write most


def test_chitchat_reply_pairs_match_the_raw_turns(
    chitchat_raw: dict[str, Any], chitchat_records: list[Record]
) -> None:
    conv_id, conv = next(iter(chitchat_raw.items()))
    turns = conv["messages"]
    records = [r for r in chitchat_records if r["conversation"] == conv_id]
    assert len(records) == len(turns) - 1  # the first turn has no prompt
    first = records[0]
    assert first["messages"][0]["content"] == " ".join(m["text"] for m in turns[0])
    assert first["messages"][1]["content"] == " ".join(m["text"] for m in turns[1])
    assert first["user"] == turns[1][0]["sender"]


def test_chatterbot_pairs_and_categories() -> None:
    records = load_records(DataConfig(source="chatterbot"))
    categories = Counter(r["category"] for r in records)
    assert 18 <= len(categories) <= 25
    assert {"ai", "food", "trivia"} <= set(categories)
    assert len(records) > 2000
    assert all(_is_pair(r) for r in records)


def test_pydoc_chunks_cover_every_topic() -> None:
    from pydoc_data.topics import topics

    records = load_records(DataConfig(source="pydoc"))
    assert {r["topic"] for r in records} == set(topics)
    assert all(0 < len(r["text"]) <= 2000 for r in records)
    assert len(records) > 2 * len(topics)  # big topics are cut into several chunks
    assert record_kind(records) == "text"


def test_chunk_paragraphs_joins_small_and_cuts_large() -> None:
    text = "a" * 10 + "\n\n" + "b" * 10 + "\n\n\n" + "c" * 25 + "\n" + "d" * 5
    chunks = chunk_paragraphs(text, max_chars=24)
    assert chunks == ["a" * 10 + "\n\n" + "b" * 10, "c" * 24, "c\n\nddddd"]
    assert all(len(c) <= 24 for c in chunks)


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_forms_and_metadata(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "chat.jsonl",
        [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo"},
                    ],
                    "user": "ann",
                }
            ),
            "",
            json.dumps({"prompt": "q", "response": "a", "user": "bob", "lang": "en"}),
        ],
    )
    records = load_records(DataConfig(source=str(path)))
    assert records[0] == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "user": "ann",
    }
    assert records[1]["messages"][1] == {"role": "assistant", "content": "a"}
    assert (records[1]["user"], records[1]["lang"]) == ("bob", "en")
    assert record_kind(records) == "chat"


def test_jsonl_text_and_txt_paragraphs(tmp_path: Path) -> None:
    jsonl = _write(tmp_path, "t.jsonl", [json.dumps({"text": "one", "user": "u"})])
    assert load_file(jsonl) == [{"text": "one", "user": "u"}]
    txt = tmp_path / "t.txt"
    txt.write_text("first para\nline two\n\n\n  \nsecond\n")
    assert load_file(txt) == [{"text": "first para\nline two"}, {"text": "second"}]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"question": "x"}', "missing fields"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
        ('{"messages": [{"role": "user"}]}', "'role' and 'content'"),
        ('{"prompt": "x"}', "'response' must be a string"),
        ('{"text": ""}', "non-empty string"),
        ('{"text": "x"}', "a text record, but earlier lines are chat"),
    ],
)
def test_bad_jsonl_names_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    good = json.dumps({"prompt": "p", "response": "r"})
    path = _write(tmp_path, "bad.jsonl", [good, "", line])
    with pytest.raises(DataError) as err:
        load_file(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 3" in message
    assert reason in message


def test_file_level_errors(tmp_path: Path) -> None:
    empty = _write(tmp_path, "empty.jsonl", [""])
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        load_file(empty)
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_records(DataConfig(source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match=r"unknown suffix '\.csv'"):
        load_records(DataConfig(source=str(tmp_path / "data.csv")))
    with pytest.raises(UnknownComponentError, match="chitchat"):
        load_records(DataConfig(source="chitchatt"))


def test_record_kind_rejects_mixed_and_empty() -> None:
    with pytest.raises(DataError, match="mixes chat and text"):
        record_kind([{"text": "a"}, {"messages": []}])
    with pytest.raises(DataError, match="no records"):
        record_kind([])


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_byte_that_is_not_utf8_is_reported_by_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(
        DataError, match=r"data\.(jsonl|txt):3: not UTF-8.*0xe9 at column 14 of line 3"
    ):
        load_file(path)
