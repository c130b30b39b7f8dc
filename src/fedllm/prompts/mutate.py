"""Template mutations of instructions: paraphrase a word, add or remove a sentence, reorder.

Every choice is drawn from a generator seeded by
:func:`fedllm.seeding.derive_seed` from (seed, round, attempt): the same seed
gives the same mutations.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from fedllm.seeding import derive_seed

SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("answer", "respond to", "reply to"),
    ("question", "query", "message"),
    ("short", "brief", "concise"),
    ("friendly", "polite", "warm"),
    ("helpful", "kind", "knowledgeable"),
    ("assistant", "companion", "chatbot"),
    ("user", "person", "speaker"),
    ("give", "offer", "write"),
    ("direct", "clear", "simple"),
)
"""Interchangeable words and phrases; a paraphrase swaps one for another of its group."""

CONSTRAINTS: tuple[str, ...] = (
    "Keep it short.",
    "Use one sentence.",
    "Be friendly.",
    "Stay on topic.",
    "Speak naturally, as in a casual chat.",
    "Do not repeat the question.",
)
"""Sentences that ``add_constraint`` appends."""

OPERATIONS: tuple[str, ...] = ("paraphrase", "add_constraint", "remove_sentence", "reorder")
TRIES_PER_MUTATION = 20
"""Attempts per requested mutation before giving up on finding a new distinct one."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Mutation:
    """A new instruction and how it was made.

    Attributes:
        text: the new instruction.
        parent: the instruction it was made from.
        operation: one of :data:`OPERATIONS`.
    """

    text: str
    parent: str
    operation: str


def propose(
    parents: Sequence[str], n: int, seed: int, round_num: int, existing: Collection[str]
) -> list[Mutation]:
    """Up to ``n`` new instructions, distinct from each other and from ``existing``.

    Parents are taken in turn (best first); each attempt picks one of the
    operations that apply to its parent. Distinctness ignores case and spacing.

    Args:
        parents: the instructions to mutate, best first.
        n: how many new instructions to make.
        seed: the run seed.
        round_num: the mutation round (1, 2, ...).
        existing: instructions already scored; never proposed again.
    """
    seen = {normalize(text) for text in existing} | {normalize(p) for p in parents}
    out: list[Mutation] = []
    for attempt in range(n * TRIES_PER_MUTATION):
        if len(out) == n or not parents:
            break
        rng = random.Random(derive_seed(seed, "hard-prompt-mutation", round_num, attempt))
        parent = parents[attempt % len(parents)]
        ops = applicable(parent)
        if not ops:
            continue
        op = rng.choice(ops)
        text = apply(op, parent, rng)
        if text is None or normalize(text) in seen:
            continue
        seen.add(normalize(text))
        out.append(Mutation(text, parent, op))
    return out


def applicable(text: str) -> list[str]:
    """The operations that can change ``text``."""
    ops = []
    if _phrase_matches(text):
        ops.append("paraphrase")
    if _missing_constraints(text):
        ops.append("add_constraint")
    if len(sentences(text)) > 1:
        ops += ["remove_sentence", "reorder"]
    return ops


def apply(operation: str, text: str, rng: random.Random) -> str | None:
    """``text`` changed by ``operation`` (None if it does not apply).

    Raises:
        ValueError: an operation not in :data:`OPERATIONS`.
    """
    if operation not in _OPS:
        raise ValueError(f"unknown mutation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return _OPS[operation](text, rng)


def sentences(text: str) -> list[str]:
    """``text`` cut after each ``.``, ``!`` or ``?`` followed by whitespace."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def normalize(text: str) -> str:
    """Case- and spacing-insensitive form, for telling instructions apart."""
    return " ".join(text.split()).casefold()


def paraphrase(text: str, rng: random.Random) -> str | None:
    """Swap one word or phrase of :data:`SYNONYMS` for another of its group (case kept)."""
    matches = _phrase_matches(text)
    if not matches:
        return None
    start, end, group = rng.choice(matches)
    found = text[start:end]
    choices = [p for p in group if p != found.lower()]
    new = rng.choice(choices)
    if found[0].isupper():
        new = new[0].upper() + new[1:]
    return text[:start] + new + text[end:]


def add_constraint(text: str, rng: random.Random) -> str | None:
    """Append a :data:`CONSTRAINTS` sentence the text does not have yet."""
    missing = _missing_constraints(text)
    if not missing:
        return None
    head = text.strip()
    if head[-1] not in ".!?":
        head += "."
    return f"{head} {rng.choice(missing)}"


def remove_sentence(text: str, rng: random.Random) -> str | None:
    """Drop one sentence (the text keeps at least one)."""
    parts = sentences(text)
    if len(parts) < 2:
        return None
    del parts[rng.randrange(len(parts))]
    return " ".join(parts)


def reorder(text: str, rng: random.Random) -> str | None:
    """The sentences in another order."""
    parts = sentences(text)
    if len(parts) < 2 or len({normalize(p) for p in parts}) < 2:
        return None
    order = list(parts)
    while order == parts:
        rng.shuffle(order)
    return " ".join(order)


def _phrase_matches(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, group) of every whole-word occurrence of a synonym phrase."""
    found = []
    for group in SYNONYMS:
        for phrase in group:
            pattern = r"\b" + re.escape(phrase) + r"\b"
            found += [(m.start(), m.end(), group) for m in re.finditer(pattern, text, re.I)]
    return sorted(found, key=lambda m: (m[0], m[1]))


def _missing_constraints(text: str) -> list[str]:
    have = {normalize(s) for s in sentences(text)}
    return [c for c in CONSTRAINTS if normalize(c) not in have]


_OPS: dict[str, Callable[[str, random.Random], str | None]] = {
    "paraphrase": paraphrase,
    "add_constraint": add_constraint,
    "remove_sentence": remove_sentence,
    "reorder": reorder,
}
