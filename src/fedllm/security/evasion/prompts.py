"""Held-out prompts to attack: each test example split into the prompt the attacker
controls and the reference response whose loss it moves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedllm.data import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Prompt:
    """One attacked example.

    Attributes:
        ids: the prompt's token ids (what the attacker perturbs or extends).
        response: the reference response's token ids that follow it.
        response_labels: their labels (``-100`` where the example takes no loss).
        tail: how many of the prompt's last tokens are the chat template's (the end of
            the user turn and the assistant header); a suffix goes before them.
    """

    ids: list[int]
    response: list[int]
    response_labels: list[int]
    tail: int = 0

    def example(self) -> Example:
        """The prompt and its response as one example, the response scored."""
        return Example(
            [*self.ids, *self.response], [IGNORE_INDEX] * len(self.ids) + self.response_labels
        )


def split_prompt(example: Example, tail: Sequence[int] = ()) -> Prompt | None:
    """``example`` cut at its first scored token (a chat: the user turns before the
    reply); an example scored from its start (packed text) is cut in half. None when
    no token would be left on either side. ``tail``: the chat template's end of a user
    turn, counted when the prompt ends with it."""
    scored = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX and i > 0]
    if not scored:
        return None
    cut = scored[0] if scored[0] > 1 else len(example.input_ids) // 2
    if cut < 1 or cut >= len(example.input_ids):
        return None
    ids = list(example.input_ids[:cut])
    labels = list(example.labels[cut:])
    if all(label == IGNORE_INDEX for label in labels):
        return None
    ends = len(tail) > 0 and len(ids) > len(tail) and ids[-len(tail) :] == list(tail)
    return Prompt(ids, list(example.input_ids[cut:]), labels, len(tail) if ends else 0)


def chat_tail(tokenizer: Any) -> list[int]:
    """The tokens the chat template puts after a user message's text (end of turn,
    assistant header): the longest common end of two one-message prompts. Empty for a
    tokenizer without a chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        return []
    rendered = []
    for text in ("alpha", "omega"):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        rendered.append(list(out if isinstance(out, list) else out["input_ids"]))
    first, second = rendered
    common = 0
    while common < min(len(first), len(second)) and first[-1 - common] == second[-1 - common]:
        common += 1
    return first[len(first) - common :]


def held_out_prompts(examples: Sequence[Example], count: int, tokenizer: Any) -> list[Prompt]:
    """The first ``count`` examples of ``examples`` that split into a prompt and a
    response (:func:`split_prompt`)."""
    tail = chat_tail(tokenizer)
    out: list[Prompt] = []
    for example in examples:
        prompt = split_prompt(example, tail)
        if prompt is not None:
            out.append(prompt)
        if len(out) == count:
            break
    return out
