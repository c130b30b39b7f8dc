"""Client-side data cleaning (``[algorithm.cleaning]``): each client drops suspicious
training examples before it trains, and no example leaves it.

Before every round's training a client removes, in this order: examples whose decoded
text contains a trigger pattern (``patterns``, regular expressions) or a listed word
(``words``, ``words_file``); near-duplicates of an earlier kept example (``duplicate_jaccard``
on ``shingle_tokens``-token shingles of the token ids); and examples whose mean token
loss under the model it received this round is too high (``loss_rule``: an absolute
bound, a quantile of its own losses, or a z-score among them). It trains on the rest,
batched as without cleaning. What it removed, by rule and example index, is written to
its own state folder (``clients/cleaning/<client>/round-<r>.json``); the server sees the
counts only with ``report_counts = true``.

This is not one paper's algorithm but the usual pre-training filters run on the client:
perplexity filtering against a reference model (as in Wenzek et al. 2020's CCNet, with
the received global model as the reference), near-duplicate removal by shingle Jaccard
(Broder 1997; computed exactly, not by MinHash, as a client's data is small), and
trigger or keyword filters. The aggregation weight stays the client's size before
cleaning (the kept count is a function of the data; the size the server already has).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.settings import Section

if TYPE_CHECKING:
    from fedllm.config import Config

NAME = "cleaning"

LossRule = Literal["none", "absolute", "quantile", "zscore"]
"""How the loss rule cuts (see :func:`fedllm.security.cleaning.rules.loss_cut`)."""


class CleaningSettings(Section):
    """``[algorithm.cleaning]``; on when any rule is set."""

    patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions (Python re) searched in each example's decoded "
        "text (chat template included); an example with a match is removed. A plain "
        "trigger string is its own pattern (escape . * + ? ( ) [ ] and the like).",
    )
    words: list[str] = Field(
        default_factory=list,
        description="Words or phrases: an example containing one as a whole word, in any "
        "case, is removed.",
    )
    words_file: str | None = Field(
        None,
        description="A UTF-8 text file of more words, one a line, read by each client "
        "(blank lines and lines starting with # are skipped); none: only 'words'.",
    )
    duplicate_jaccard: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Remove an example whose token shingles have a Jaccard similarity of "
        "at least this with an earlier kept example's (1: the same shingle set); none: "
        "keep duplicates.",
    )
    shingle_tokens: int = Field(5, ge=1, description="Tokens per shingle of the duplicate rule.")
    loss_rule: LossRule = Field(
        "none",
        description="Remove high-loss examples under the received model: 'absolute' "
        "(mean token loss above loss_threshold nats), 'quantile' (above the client's "
        "loss_threshold-quantile), 'zscore' (more than loss_threshold standard deviations "
        "above the client's mean), or 'none'.",
    )
    loss_threshold: float | None = Field(
        None, description="The loss rule's bound, quantile or z-score (see loss_rule)."
    )
    score_batch_size: int = Field(
        16, ge=1, description="Examples per forward pass when scoring losses."
    )
    report_counts: bool = Field(
        False,
        description="Send the counts removed by each rule (and kept) to the server in every "
        "reply, where they are recorded, under every privacy mechanism too: they are a "
        "function of the client's data. False: they stay in the client's own report.",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression: {err}") from None
        return patterns

    @model_validator(mode="after")
    def _check_loss_rule(self) -> CleaningSettings:
        rule, value = self.loss_rule, self.loss_threshold
        if rule == "none":
            return self
        valid = {
            "absolute": ("a loss in nats > 0", value is not None and value > 0),
            "quantile": ("a quantile in (0, 1)", value is not None and 0 < value < 1),
            "zscore": ("a z-score >= 0", value is not None and value >= 0),
        }
        wanted, ok = valid[rule]
        if not ok:
            raise ValueError(f"loss_rule = {rule!r} needs loss_threshold = {wanted}, got {value}")
        return self

    @property
    def active(self) -> str | None:
        """The first setting that turns cleaning on, as an error names it; None: off."""
        for key, value in (
            ("patterns", self.patterns),
            ("words", self.words),
            ("words_file", self.words_file),
            ("duplicate_jaccard", self.duplicate_jaccard),
        ):
            if value:
                return f"algorithm.cleaning.{key} = {value!r}"
        if self.loss_rule != "none":
            return f"algorithm.cleaning.loss_rule = {self.loss_rule!r}"
        return None


@ALGORITHMS.register(NAME)
class Cleaning:
    """Each client filters its own training examples before every round's training."""

    order = 45
    settings = CleaningSettings

    def setting(self, config: Config) -> str | None:
        active: str | None = config.settings_of(NAME).active
        return active

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [
            ("public_mix", "both draw the client's batches: the public mix would be dropped"),
            (
                "local_dp",
                "DP-SGD draws its lots from every record the accountant counts; a filter "
                "that depends on other records (duplicates, a quantile) changes which "
                "datasets are neighbours",
            ),
        ]

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.cleaning.client import CleaningPlugin, read_words

        settings: Any = setup.ws.config.settings_of(NAME)
        if settings.active is None:
            return None
        words = [*settings.words, *read_words(settings.words_file)]
        ws = setup.ws
        plugin = CleaningPlugin(settings, words, ws.model, ws.tokenizer, ws.config.client.bf16)
        return Algorithm(NAME, client=plugin)
