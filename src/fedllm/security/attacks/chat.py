"""The parts of a chat record a data attack changes: the last user turn and the
assistant reply that answers it."""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedllm.data.sources import POISONED_KEY, DataError, Record

Position = Literal["start", "end", "random"]


def last_exchange(record: Record) -> tuple[int, int] | None:
    """Indices of the last assistant message and of the user turn just before it in
    ``record["messages"]``; None when the record has no such pair (a text record, a chat
    whose last reply follows no user turn)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return None
    reply = next(
        (i for i in reversed(range(len(messages))) if _role(messages[i]) == "assistant"), None
    )
    if reply is None:
        return None
    prompt = next((i for i in reversed(range(reply)) if _role(messages[i]) == "user"), None)
    return None if prompt is None else (prompt, reply)


def prompt_of(record: Record) -> str | None:
    """The user turn that the record's last assistant reply answers, or None."""
    found = last_exchange(record)
    return None if found is None else str(record["messages"][found[0]]["content"])


def reply_of(record: Record) -> str | None:
    """The record's last assistant reply (the one answering :func:`prompt_of`), or None."""
    found = last_exchange(record)
    return None if found is None else str(record["messages"][found[1]]["content"])


def poisoned(
    record: Record, attack: str, prompt: str | None = None, reply: str | None = None
) -> Record:
    """A copy of ``record`` with its last exchange's user turn and/or reply replaced,
    marked with :data:`~fedllm.data.sources.POISONED_KEY` (the attack's name). The record
    must have an exchange (:func:`last_exchange`)."""
    found = last_exchange(record)
    if found is None:
        raise ValueError("poisoned() needs a chat record with a user turn and its reply")
    messages = [dict(m) for m in record["messages"]]
    if prompt is not None:
        messages[found[0]]["content"] = prompt
    if reply is not None:
        messages[found[1]]["content"] = reply
    return {**record, "messages": messages, POISONED_KEY: attack}


def chat_record(prompt: str, reply: str, attack: str) -> Record:
    """A new two-turn chat record, marked as made by ``attack``."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return {"messages": messages, POISONED_KEY: attack}


def with_trigger(text: str, trigger: str, position: Position, rng: np.random.Generator) -> str:
    """``text`` with ``trigger`` inserted as a word: before it (``start``), after it
    (``end``), or between two of its whitespace-separated words drawn from ``rng``
    (``random``; any of the ``words + 1`` gaps)."""
    words = text.split()
    if position == "start":
        at = 0
    elif position == "end":
        at = len(words)
    else:
        at = int(rng.integers(0, len(words) + 1))
    return " ".join([*words[:at], trigger, *words[at:]])


def require_chat(kind: str, attack: str) -> None:
    """Refuse text records: a data attack changes prompts and replies.

    Raises:
        DataError: naming the attack and what data would do.
    """
    if kind != "chat":
        raise DataError(
            f"attack.data = {attack!r} changes prompts and replies, but the data source "
            "gives plain text records: use a chat source (chitchat, chatterbot) or a .jsonl "
            "file with 'messages' or 'prompt'/'response'"
        )


def _role(message: object) -> object:
    return message.get("role") if isinstance(message, dict) else None
