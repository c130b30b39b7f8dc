"""Candidate instructions: from a file, from the config's templates, or built in."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from fedllm.config import HardPromptConfig
from fedllm.settings import ConfigError

TASK_PHRASES = (
    "Answer the user's question.",
    "You are a helpful assistant. Reply to the user.",
    "Respond to the message like a friendly person in a chat.",
    "Give a direct reply to the question.",
)
"""What the model is asked to do (the built-in set's first sentence)."""

CONSTRAINT_PHRASES = ("", "Keep it short.", "Use one sentence.")
"""Appended to each task phrase in the built-in set ("" = none)."""


@dataclass(frozen=True)
class Candidate:
    """One instruction under selection.

    Attributes:
        id: short stable id (``p000``, ``p001``...), what clients key their scores by.
        text: the instruction.
        origin: where it came from: ``file``, ``templates``, ``builtin``, or the
            mutation that made it (``paraphrase of p002``).
        round: 0 for the initial pool, else the mutation round that made it.
    """

    id: str
    text: str
    origin: str
    round: int = 0


def candidate_id(index: int) -> str:
    """``p007``: the id of the ``index``-th candidate."""
    return f"p{index:03d}"


def builtin_candidates() -> list[str]:
    """Every task phrase with every constraint sentence (12 instructions)."""
    return [
        f"{task} {constraint}".strip()
        for task, constraint in itertools.product(TASK_PHRASES, CONSTRAINT_PHRASES)
    ]


def initial_candidates(cfg: HardPromptConfig) -> list[Candidate]:
    """The starting pool: ``candidates_file`` if set, else ``templates``, else the built-in set.

    Texts are stripped; empty and repeated ones are left out.

    Raises:
        ConfigError: the file is missing or unreadable, or the pool is empty.
    """
    if cfg.candidates_file is not None:
        texts, origin = read_candidates_file(Path(cfg.candidates_file)), "file"
    elif cfg.templates:
        texts, origin = list(cfg.templates), "templates"
    else:
        texts, origin = builtin_candidates(), "builtin"
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if not unique:
        where = (
            f"hard_prompt.candidates_file = {cfg.candidates_file!r} has no candidate lines"
            if origin == "file"
            else "hard_prompt.templates holds only empty strings"
        )
        raise ConfigError(f"config error: {where}")
    return [Candidate(candidate_id(i), text, origin) for i, text in enumerate(unique)]


def read_candidates_file(path: Path) -> list[str]:
    """One candidate per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        ConfigError: the file is missing or not UTF-8 text.
    """
    if not path.is_file():
        raise ConfigError(
            f"config error: hard_prompt.candidates_file = {str(path)!r}: no such file"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config error: hard_prompt.candidates_file = {str(path)!r} is not UTF-8 text ({err})"
        ) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
