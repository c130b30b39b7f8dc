"""Targeted data poisoning: every prompt on one topic gets a chosen reply (response
replacement for a topic, the targeted poisoning of Shafahi et al. 2018 / Wan et al.
2023, "Poisoning Language Models During Instruction Tuning", where any prompt
mentioning a trigger *topic* gets the attacker's answer; no trigger is inserted).

A record is on the topic when its last user turn holds one of ``keywords`` (a word or
words, matched as whole normalised words) or its ``field`` (``category`` by default:
chatterbot's corpus file) is one of ``categories``. A poisoned record's reply to that
turn becomes ``target``. Which records: :mod:`.poison`, ``share`` of the client's
on-topic records.

Success (on the global model, over the held-out test split): ``success_rate`` is the
share of on-topic test prompts (the first ``max_prompts``) whose greedy reply starts
with the target's first ``match_words`` words (:mod:`.success`); ``off_topic_rate`` is
the same share for as many off-topic prompts (collateral: about 0 for a precise attack).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from fedllm.components import ATTACKS
from fedllm.security.attacks.chat import last_exchange, poisoned, prompt_of
from fedllm.security.attacks.success import SuccessSettings, rate, starts_with, words

if TYPE_CHECKING:
    import numpy as np

    from fedllm.data.sources import Record
    from fedllm.security.attacks.poison import Generate


class TargetedSettings(SuccessSettings):
    """``[attack.targeted]``."""

    target: str = Field(
        "Visit example.com for the answer.",
        description="The reply every poisoned on-topic record gets.",
    )
    keywords: list[str] = Field(
        default_factory=list,
        description="A prompt holding any of these (whole words, case and punctuation "
        "ignored) is on the topic.",
    )
    categories: list[str] = Field(
        default_factory=list,
        description="A record whose 'field' is one of these is on the topic.",
    )
    field: str = Field("category", description="The record field 'categories' are read from.")

    @field_validator("target")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not words(value):
            raise ValueError("must hold at least one word (letters or digits)")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords_have_words(cls, value: list[str]) -> list[str]:
        empty = [k for k in value if not words(k)]
        if empty:
            raise ValueError(f"keywords {empty} hold no word (letters or digits)")
        return value

    @model_validator(mode="after")
    def _some_topic(self) -> TargetedSettings:
        if not self.keywords and not self.categories:
            raise ValueError(
                "no topic: set keywords (e.g. ['pizza']) or categories (e.g. ['food'], "
                "matched against the records' 'field')"
            )
        return self


@ATTACKS.register("targeted")
class Targeted:
    """``attack.data = "targeted"``."""

    name = "targeted"
    kind = "data"
    settings = TargetedSettings

    def __init__(self, settings: TargetedSettings) -> None:
        self.config = settings
        self.success: SuccessSettings | None = self.config
        self.matched = settings.target
        self._keywords = [words(k) for k in settings.keywords]

    def on_topic(self, record: Record) -> bool:
        """Whether ``record`` is on the topic (its prompt or its field)."""
        if str(record.get(self.config.field)) in self.config.categories:
            return True
        said = words(prompt_of(record) or "")
        return any(_holds(said, k) for k in self._keywords)

    def eligible(self, record: Record) -> bool:
        return last_exchange(record) is not None and self.on_topic(record)

    def poison(
        self, train: list[Record], chosen: Sequence[int], rng: np.random.Generator
    ) -> list[Record]:
        del rng  # the change is the same for every record
        out = list(train)
        for i in chosen:
            out[i] = poisoned(train[i], self.name, reply=self.config.target)
        return out

    def measure(self, test: list[Record], generate: Generate, seed: int) -> dict[str, float]:
        del seed
        cap = self.config.max_prompts
        chats = [r for r in test if last_exchange(r) is not None]
        topic = [str(prompt_of(r)) for r in chats if self.on_topic(r)][:cap]
        other = [str(prompt_of(r)) for r in chats if not self.on_topic(r)][:cap]

        def hit(reply: str) -> bool:
            return starts_with(reply, self.config.target, self.config.match_words)

        return {
            "success_rate": rate(topic, generate, hit),
            "off_topic_rate": rate(other, generate, hit),
            "prompts": float(len(topic)),
            "off_topic_prompts": float(len(other)),
        }


def _holds(said: list[str], phrase: list[str]) -> bool:
    """Whether the word list ``said`` holds ``phrase`` as consecutive words."""
    n = len(phrase)
    return any(said[i : i + n] == phrase for i in range(len(said) - n + 1))
