"""Data sources: each turns a :class:`DataConfig` into a list of records.

A record is a dict holding either ``"messages"`` (a chat: a list of
``{"role", "content"}`` with roles ``system``/``user``/``assistant``) or
``"text"`` (a plain document), plus metadata fields that partitioners group
on (``user``, ``category``, ``topic``...). Built-in sources are registered by
name in :data:`fedllm.components.DATA_SOURCES`; a ``.jsonl`` or ``.txt`` path
is read as a user file.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedllm.components import DATA_SOURCES
from fedllm.data.settings import DataConfig

Record = dict[str, Any]
"""One raw example: ``messages`` or ``text``, plus metadata fields."""

Source = Callable[[DataConfig], list[Record]]

ROLES = ("system", "user", "assistant")
POISONED_KEY = "poisoned"
"""The field a record changed by a simulated data attack carries (the attack's name);
encoding ignores it, the data summary counts it."""
FILE_SUFFIXES = (".jsonl", ".txt")
PYDOC_CHUNK_CHARS = 2000
"""Largest pydoc chunk, in characters (chunks are mostly 1-2k characters)."""


class DataError(ValueError):
    """Input data that cannot be used, with the file, line and reason where known."""


def load_records(cfg: DataConfig) -> list[Record]:
    """The records of ``cfg.source``: a registered source name or a data file path.

    Raises:
        DataError: a path that is missing, has an unknown suffix or holds bad data.
        UnknownComponentError: a name that no source is registered under.
    """
    source = cfg.source
    suffix = Path(source).suffix
    if suffix in FILE_SUFFIXES:
        return load_file(source)
    if source not in DATA_SOURCES and (suffix or "/" in source or Path(source).exists()):
        raise DataError(
            f"data file {source}: unknown suffix {suffix or '(none)'!r}; "
            f"data files must end in {' or '.join(FILE_SUFFIXES)}"
        )
    loader: Source = DATA_SOURCES.get(source)
    return loader(cfg)


def record_kind(records: list[Record]) -> str:
    """``"chat"`` if every record has ``messages``, ``"text"`` if every one has ``text``.

    Raises:
        DataError: no records, or a mix of both kinds.
    """
    if not records:
        raise DataError("the data source produced no records")
    chat = sum("messages" in r for r in records)
    if chat == len(records):
        return "chat"
    if chat == 0 and all("text" in r for r in records):
        return "text"
    raise DataError(
        f"the data source mixes chat and text records ({chat} of {len(records)} have "
        "'messages'); use one kind per source"
    )


def record_text(record: Record) -> str:
    """The text of a record: ``text``, or its messages' contents joined by newlines."""
    if "messages" in record:
        return "\n".join(str(m.get("content", "")) for m in record["messages"])
    return str(record.get("text", ""))


# ---------------------------------------------------------------- built-in sources


@DATA_SOURCES.register("chitchat")
def chitchat(cfg: DataConfig) -> list[Record]:
    """One chat record per reply in the chitchat dataset (about 7k conversations).

    The user message is the previous turn, the assistant message the reply;
    ``user`` is the reply's sender (a natural, power-law sized federation) and
    ``conversation`` the conversation id. First turns (no prompt) are skipped.
    """
    del cfg
    path = _package_dir("chitchat_dataset") / "dataset.json"
    with path.open(encoding="utf-8") as handle:
        raw: dict[str, Any] = json.load(handle)
    records: list[Record] = []
    for conv_id, conv in raw.items():
        turns = conv["messages"]
        for prev, turn in itertools.pairwise(turns):
            if not prev or not turn:
                continue
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": " ".join(m["text"] for m in prev)},
                        {"role": "assistant", "content": " ".join(m["text"] for m in turn)},
                    ],
                    "user": turn[0]["sender"],
                    "conversation": conv_id,
                }
            )
    return records


_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML has it (16x faster on the corpus), same result."""


@DATA_SOURCES.register("chatterbot")
def chatterbot(cfg: DataConfig) -> list[Record]:
    """One chat record per consecutive (question, answer) pair of the English corpus.

    ``category`` is the corpus file's stem (``ai``, ``food``, ``trivia``...).
    """
    del cfg
    folder = _package_dir("chatterbot_corpus") / "data" / "english"
    records: list[Record] = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
        for conversation in data.get("conversations") or []:
            lines = [str(line) for line in conversation]
            for question, answer in itertools.pairwise(lines):
                records.append(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ],
                        "category": path.stem,
                    }
                )
    return records


@DATA_SOURCES.register("pydoc")
def pydoc(cfg: DataConfig) -> list[Record]:
    """Plain-text chunks of the standard library's pydoc topics.

    Each topic is cut at paragraph breaks into chunks of at most
    :data:`PYDOC_CHUNK_CHARS` characters; fields ``topic`` and ``chunk`` (index).
    """
    del cfg
    from pydoc_data.topics import topics

    records: list[Record] = []
    for topic in sorted(topics):
        for i, chunk in enumerate(chunk_paragraphs(topics[topic], PYDOC_CHUNK_CHARS)):
            records.append({"text": chunk, "topic": topic, "chunk": i})
    return records


def chunk_paragraphs(text: str, max_chars: int) -> list[str]:
    """Greedily join blank-line-separated paragraphs into chunks of <= ``max_chars``.

    A paragraph longer than ``max_chars`` is cut at line breaks, and a line
    longer than that at ``max_chars`` characters.
    """
    pieces: list[str] = []
    for para in _paragraphs(text):
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        for line in para.split("\n"):
            pieces.extend(line[i : i + max_chars] for i in range(0, len(line), max_chars))
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        joined = f"{current}\n\n{piece}" if current else piece
        if len(joined) <= max_chars:
            current = joined
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


# ---------------------------------------------------------------- user files


def load_file(path: str | Path) -> list[Record]:
    """Records of a ``.jsonl`` (chat or text per line) or ``.txt`` (paragraphs) file.

    Raises:
        DataError: naming the file (and line) for a missing or empty file, an
            unknown suffix, bad JSON, missing fields or an unknown role.
    """
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(
            f"data file {path}: unknown suffix {path.suffix or '(none)'!r}; "
            f"expected {' or '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"data file {path}: no such file")
    text = _read_utf8(path)
    records = _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_txt(text)
    if not records:
        raise DataError(f"data file {path}: empty file (no records)")
    return records


def _read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is reported by line and column."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"data file {path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
            f"{column} of line {line}); save the file as UTF-8"
        ) from None


def _read_txt(text: str) -> list[Record]:
    return [{"text": para} for para in _paragraphs(text)]


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records: list[Record] = []
    first_kind: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue

        def fail(reason: str, number: int = number) -> DataError:
            return DataError(f"data file {path}, line {number}: {reason}")

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(f"bad JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise fail(f"expected a JSON object, got {type(obj).__name__}")
        record = _parse_object(obj, fail)
        kind = "chat" if "messages" in record else "text"
        first_kind = first_kind or kind
        if kind != first_kind:
            raise fail(f"a {kind} record, but earlier lines are {first_kind} records")
        records.append(record)
    return records


def _parse_object(obj: dict[str, Any], fail: Callable[[str], DataError]) -> Record:
    """One jsonl object as a record: messages, prompt+response or text, plus metadata."""
    metadata = {k: v for k, v in obj.items() if k not in {"messages", "prompt", "response", "text"}}
    if "messages" in obj:
        return {"messages": _parse_messages(obj["messages"], fail), **metadata}
    if "prompt" in obj or "response" in obj:
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str):
                raise fail(f"'{key}' must be a string when 'prompt'/'response' are used")
        messages = [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["response"]},
        ]
        return {"messages": messages, **metadata}
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise fail("'text' must be a non-empty string")
        return {"text": obj["text"], **metadata}
    raise fail(
        f"missing fields: expected 'messages', 'prompt' and 'response', or 'text'; "
        f"found {sorted(obj) or 'no keys'}"
    )


def _parse_messages(messages: Any, fail: Callable[[str], DataError]) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise fail("'messages' must be a non-empty list")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise fail(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise fail(f"messages[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise fail(f"messages[{i}] content must be a string")
        parsed.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in parsed):
        raise fail("'messages' has no assistant message (nothing to train on)")
    if parsed[0]["role"] == "assistant":
        raise fail("'messages' starts with an assistant message; a user turn must come first")
    return parsed


# ---------------------------------------------------------------- helpers


def _paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs, stripped, empty ones left out."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DataError(f"package {package!r} is not installed (pip install {package})")
    return Path(locations[0])
