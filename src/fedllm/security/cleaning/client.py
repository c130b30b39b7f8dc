"""Client-side cleaning: the client half, filtering its examples before each round.

The rules that read only the data (patterns, words, duplicates) are computed once per
client and kept in memory; the loss rule scores the survivors every round under the
model the client received (its state when training starts). The kept examples are
batched exactly as :func:`fedllm.client.train.draw_batches` batches a client's data,
so a cleaning that removes nothing trains as a run without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.train import draw_batches
from fedllm.data import Example
from fedllm.model.device import input_device, use_bf16
from fedllm.security.cleaning import CleaningSettings
from fedllm.security.cleaning.rules import (
    loss_cut,
    loss_outliers,
    matching,
    near_duplicates,
    word_pattern,
)
from fedllm.security.embeds import mean_token_losses
from fedllm.settings import ConfigError
from fedllm.types import ClientId, ClientUpdate

NAME = "cleaning"

RULES = ("pattern", "words", "duplicate", "loss")
"""The rules in the order they run; an example removed by one is not seen by the next."""

COUNTS = frozenset({f"{NAME}/removed_{rule}" for rule in RULES} | {f"{NAME}/kept"})
"""The reply metrics ``report_counts = true`` adds (examples removed by each rule, kept)."""


class CleaningError(ValueError):
    """A client whose cleaning left nothing to train on."""


@dataclass
class Cleaned:
    """What cleaning did to one client's examples in one round.

    Attributes:
        examples: the client's training examples before cleaning.
        removed: rule -> the indices it removed (into the examples before cleaning).
        duplicate_of: each index the duplicate rule removed -> the kept one it repeats.
        loss_cut: the loss (nats per token) above which the loss rule removed; None when
            no loss rule is set.
    """

    examples: int
    removed: dict[str, list[int]] = field(default_factory=dict)
    duplicate_of: dict[int, int] = field(default_factory=dict)
    loss_cut: float | None = None

    @property
    def kept(self) -> int:
        return self.examples - sum(len(v) for v in self.removed.values())

    def counts(self) -> dict[str, float]:
        """The reply metrics: removed per rule, and kept."""
        out = {f"{NAME}/removed_{rule}": float(len(self.removed.get(rule, []))) for rule in RULES}
        return {**out, f"{NAME}/kept": float(self.kept)}

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "kept": self.kept,
            "removed": {rule: self.removed.get(rule, []) for rule in RULES},
            "duplicate_of": {str(i): j for i, j in self.duplicate_of.items()},
            "loss_cut": self.loss_cut,
        }


class CleanedBatches(TrainHook):
    """Batches of the examples ``clean`` keeps (drawn as the trainer draws them)."""

    def __init__(self, clean: Callable[[Sequence[Example]], list[Example]]) -> None:
        self.clean = clean

    def batches(
        self, examples: Sequence[Example], batch_size: int, seed: int
    ) -> Iterator[list[Example]]:
        return draw_batches(self.clean(examples), batch_size, seed)


class CleaningPlugin(ClientPlugin):
    """Removes each client's suspicious examples before it trains; reports locally.

    Args:
        settings: the ``[algorithm.cleaning]`` section.
        words: the word list (``words`` and ``words_file`` together).
        model: the model clients train (holding the received state when training starts).
        tokenizer: decodes examples for the pattern and word rules.
        bf16: ``client.bf16`` (the loss rule scores with the trainer's precision).
    """

    name = NAME
    keeps_state = True  # its folder holds each client's report

    def __init__(
        self,
        settings: CleaningSettings,
        words: Sequence[str],
        model: torch.nn.Module,
        tokenizer: Any,
        bf16: Any = False,
    ) -> None:
        self.settings, self.model, self.tokenizer, self.bf16 = settings, model, tokenizer, bf16
        texts = [re.compile(p) for p in settings.patterns]
        listed = word_pattern(words)
        self.patterns: list[tuple[str, list[re.Pattern[str]]]] = [("pattern", texts)]
        self.patterns.append(("words", [listed] if listed is not None else []))
        self.public_metrics = COUNTS if settings.report_counts else frozenset()
        self._fixed: dict[ClientId, tuple[int, Cleaned]] = {}
        self._done: dict[ClientId, Cleaned] = {}

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        return CleanedBatches(lambda examples: self.clean(ctx.client_id, examples))

    def clean(self, client_id: ClientId, examples: Sequence[Example]) -> list[Example]:
        """The examples ``client_id`` keeps this round (in their order); what was removed
        is kept for :meth:`after_train`.

        Raises:
            CleaningError: every example was removed.
        """
        fixed = self._data_rules(client_id, examples)
        gone = {i for indices in fixed.removed.values() for i in indices}
        left = [i for i in range(len(examples)) if i not in gone]
        cleaned = Cleaned(len(examples), dict(fixed.removed), dict(fixed.duplicate_of))
        settings = self.settings
        if settings.loss_rule != "none" and settings.loss_threshold is not None and left:
            device = input_device(self.model)
            losses = mean_token_losses(
                self.model,
                [examples[i] for i in left],
                settings.score_batch_size,
                int(self.tokenizer.pad_token_id),
                use_bf16(self.bf16, device),
            )
            rule, threshold = settings.loss_rule, settings.loss_threshold
            cleaned.loss_cut = loss_cut(losses, rule, threshold)
            outliers = loss_outliers(losses, rule, threshold)
            cleaned.removed["loss"] = [left[i] for i in outliers]
            dropped = set(cleaned.removed["loss"])
            left = [i for i in left if i not in dropped]
        self._done[client_id] = cleaned
        if not left:
            raise CleaningError(
                f"cleaning removed all {len(examples)} training examples of client "
                f"{client_id!r} ({_counted(cleaned)}): loosen [algorithm.cleaning]"
            )
        return [examples[i] for i in left]

    def _data_rules(self, client_id: ClientId, examples: Sequence[Example]) -> Cleaned:
        """The pattern, word and duplicate rules' removals (computed once per data)."""
        cached = self._fixed.get(client_id)
        if cached is not None and cached[0] == id(examples):
            return cached[1]
        found = Cleaned(len(examples))
        left = list(range(len(examples)))
        if any(patterns for _, patterns in self.patterns):
            texts = self.tokenizer.batch_decode([list(e.input_ids) for e in examples])
            for rule, patterns in self.patterns:
                hits = matching([texts[i] for i in left], patterns)
                found.removed[rule] = [left[i] for i in hits]
                dropped = set(found.removed[rule])
                left = [i for i in left if i not in dropped]
        threshold = self.settings.duplicate_jaccard
        if threshold is not None:
            size = self.settings.shingle_tokens
            repeats = near_duplicates([examples[i].input_ids for i in left], size, threshold)
            found.duplicate_of = {left[i]: left[j] for i, j in repeats.items()}
            found.removed["duplicate"] = sorted(found.duplicate_of)
        self._fixed[client_id] = (id(examples), found)
        return found

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        cleaned = self._done.pop(ctx.client_id, None)
        if cleaned is None:  # it drew no batch (no step this round)
            return update
        if ctx.store is not None:
            write_report(ctx.store.root, ctx.client_id, ctx.round, cleaned)
        if self.settings.report_counts:
            update.metrics.update(cleaned.counts())
        return update


def write_report(root: Path, client_id: ClientId, round_num: int, cleaned: Cleaned) -> Path:
    """Write the client's report of a round, ``root/<client>/round-<r>.json``, on the
    client's own disk (a replayed round after a resume replaces its file)."""
    path = root / client_id / f"round-{round_num:04d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"client": client_id, "round": round_num, **cleaned.to_json()}))
    os.replace(tmp, path)
    return path


def read_words(path: str | None) -> list[str]:
    """The words of a word-list file, one a line (blank lines and ``#`` comments skipped);
    none for no file.

    Raises:
        ConfigError: the file cannot be read.
    """
    if path is None:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"config error: algorithm.cleaning.words_file = {path!r} cannot be read ({err}); "
            "give a UTF-8 text file of words, one a line"
        ) from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _counted(cleaned: Cleaned) -> str:
    return ", ".join(f"{rule}: {len(cleaned.removed.get(rule, []))}" for rule in RULES)
