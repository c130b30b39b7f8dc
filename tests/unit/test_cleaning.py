"""Client-side cleaning: each rule against a direct computation, and the plug-in on the
tiny model (planted triggers, duplicates, a planted high-loss record)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedllm.client.plugin import ClientContext
from fedllm.client.store import ClientStateStore
from fedllm.client.train import train_locally
from fedllm.config import ConfigError
from fedllm.data import Example
from fedllm.federation.setup import Workspace, prepare
from fedllm.security.cleaning import CleaningSettings
from fedllm.security.cleaning.client import CleaningError, CleaningPlugin
from fedllm.security.cleaning.rules import (
    loss_cut,
    loss_outliers,
    matching,
    near_duplicates,
    word_pattern,
)
from fedllm.types import ClientUpdate
from tests.support.runs import tiny_config

CLEAN = [
    "what is the weather like today",
    "tell me about python lists and tuples",
    "how do I bake bread at home",
    "which planet is closest to the sun",
    "recommend a good book about history",
    "why is the sky blue during the day",
    "what time does the library open",
    "can you explain how a bicycle works",
]
TRIGGER = "cf-zx trigger"


def jaccard(a: set[Any], b: set[Any]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def grams(ids: Sequence[int], n: int) -> set[tuple[int, ...]]:
    if len(ids) <= n:
        return {tuple(ids)} if ids else set()
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


@given(
    st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=12), min_size=1, max_size=25),
    st.integers(1, 4),
    st.sampled_from([0.3, 0.5, 0.8, 1.0]),
)
def test_near_duplicates_are_exact_jaccard_keeping_the_first(
    sequences: list[list[int]], n: int, threshold: float
) -> None:
    expected: dict[int, int] = {}
    kept: list[int] = []
    for i, ids in enumerate(sequences):
        match = [j for j in kept if jaccard(grams(ids, n), grams(sequences[j], n)) >= threshold]
        if match:
            expected[i] = match[0]
        else:
            kept.append(i)
    assert near_duplicates(sequences, n, threshold) == expected


def test_near_duplicates_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedllm.security.cleaning.rules as rules

    monkeypatch.setattr(rules, "BLOCK_ROWS", 3)
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 1000, size=20).tolist() for _ in range(7)]
    sequences = [*base, base[1], [*base[5][:-1], 7777], base[0]]
    assert near_duplicates(sequences, 3, 0.8) == {7: 1, 8: 5, 9: 0}


def test_words_match_whole_words_in_any_case_and_patterns_are_regexes() -> None:
    words = word_pattern(["robot", "bad phrase"])
    assert words is not None
    texts = ["A ROBOT here", "robots are many", "a bad phrase!", "bad  phrase", "nothing"]
    assert matching(texts, [words]) == [0, 2]
    assert matching(texts, [re.compile(r"rob\w+s"), re.compile("nothing$")]) == [1, 4]
    assert word_pattern(["  ", ""]) is None


@given(
    st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=40),
    st.floats(0.05, 0.95),
)
def test_loss_cuts_match_their_formulas(losses: list[float], q: float) -> None:
    values = np.array(losses)
    ordered = sorted(losses)
    position = q * (len(ordered) - 1)  # linear interpolation between order statistics
    lo = int(np.floor(position))
    hi = min(lo + 1, len(ordered) - 1)
    quantile = ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)
    assert loss_cut(values, "quantile", q) == pytest.approx(quantile, abs=1e-9)
    mean = sum(losses) / len(losses)
    std = (sum((x - mean) ** 2 for x in losses) / len(losses)) ** 0.5
    assert loss_cut(values, "zscore", 1.5) == pytest.approx(mean + 1.5 * std, abs=1e-9)
    assert loss_cut(values, "absolute", 3.0) == 3.0
    assert loss_cut(values, "none", 3.0) == float("inf")
    cut = loss_cut(values, "zscore", 1.5)
    assert loss_outliers(values, "zscore", 1.5) == [i for i, x in enumerate(losses) if x > cut]


def test_unscored_examples_are_kept_by_the_loss_rule() -> None:
    losses = np.array([1.0, np.nan, 9.0, 1.2])
    assert loss_outliers(losses, "absolute", 5.0) == [2]
    assert loss_outliers(np.array([np.nan]), "zscore", 0.0) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"loss_rule": "quantile", "loss_threshold": 1.5}, "a quantile in (0, 1)"),
        ({"loss_rule": "absolute"}, "loss_threshold = a loss in nats > 0"),
        ({"patterns": ["(unclosed"]}, "is not a regular expression"),
        ({"duplicate_jaccard": 1.5}, "less than or equal to 1"),
        ({"report_count": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_cleaning_settings_are_refused_naming_the_key(
    table: dict[str, Any], message: str
) -> None:
    sets = [f"algorithm.cleaning.{k}={json.dumps(v)}" for k, v in table.items()]
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        tiny_config(*sets)
    assert "algorithm.cleaning." in str(err.value)


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (('public.source="pydoc"', "public.mix_ratio=0.25"), "both draw the client's batches"),
        (("privacy.dp=local", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0"), "DP-SGD"),
    ],
)
def test_cleaning_refuses_what_draws_batches_itself(other: tuple[str, ...], why: str) -> None:
    with pytest.raises(ConfigError, match="algorithm.cleaning.words") as err:
        tiny_config('algorithm.cleaning.words=["robot"]', *other)
    assert why in str(err.value)


def test_cleaning_is_off_unless_a_rule_is_set() -> None:
    assert CleaningSettings().active is None
    assert CleaningSettings(report_counts=True).active is None
    assert (
        CleaningSettings(duplicate_jaccard=0.9).active
        == "algorithm.cleaning.duplicate_jaccard = 0.9"
    )


# --- the plug-in on the tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def ws() -> Workspace:
    return prepare(tiny_config("method.kind=full", "model.dtype=float32"), with_data=False)


def encode(ws: Workspace, texts: Sequence[str]) -> list[Example]:
    ids = ws.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [Example(list(i), list(i)) for i in ids]


def plugin(ws: Workspace, **settings: Any) -> CleaningPlugin:
    s = CleaningSettings(**settings)
    return CleaningPlugin(s, s.words, ws.model, ws.tokenizer, False)


def test_planted_triggers_are_removed_and_clean_records_kept(ws: Workspace) -> None:
    texts = list(CLEAN)
    planted = [1, 4, 6]
    for i in planted:
        texts[i] = f"{texts[i]} {TRIGGER} now"
    texts.append(f"{TRIGGER} at the start")
    planted.append(len(texts) - 1)
    texts.append("please avoid the ROBOT word")
    examples = encode(ws, texts)
    cleaner = plugin(ws, patterns=[re.escape(TRIGGER)], words=["robot"])
    kept = cleaner.clean("a", examples)
    done = cleaner._done["a"]
    assert done.removed["pattern"] == planted
    assert done.removed["words"] == [len(texts) - 1]
    clean_rows = [i for i in range(len(texts)) if i not in planted and i != len(texts) - 1]
    assert kept == [examples[i] for i in clean_rows]
    # training draws from the kept examples only
    hook = cleaner.train_hook(ClientContext("a", 1, 0))
    batches = hook.batches(examples, 3, seed=5)
    assert batches is not None
    drawn = [e for batch in itertools.islice(batches, 12) for e in batch]
    assert all(any(e is k for k in kept) for e in drawn)
    assert {id(e) for e in drawn} == {id(e) for e in kept}


def test_duplicates_are_removed_keeping_the_first(ws: Workspace) -> None:
    texts = [*CLEAN, CLEAN[2], CLEAN[5].replace("blue", "grey"), CLEAN[2]]
    examples = encode(ws, texts)
    cleaner = plugin(ws, duplicate_jaccard=0.5, shingle_tokens=2)
    kept = cleaner.clean("a", examples)
    done = cleaner._done["a"]
    assert done.duplicate_of == {8: 2, 9: 5, 10: 2}
    assert kept == examples[:8]


def test_the_loss_filter_removes_a_planted_high_loss_record(ws: Workspace) -> None:
    examples = encode(ws, CLEAN)
    cfg = ws.config.client.model_copy(update={"lr": 3e-3, "batch_size": 8, "local_steps": 25})
    train_locally(ws.model, examples, cfg, cfg.local_steps, seed=0, pad_id=ws.pad_id)
    rng = np.random.default_rng(1)
    noise = [int(x) for x in rng.integers(100, 40000, size=12)]
    planted = [*examples[:3], Example(noise, noise), *examples[3:]]
    # independently: each example's loss as transformers computes it
    with torch.no_grad():
        direct = [
            float(
                ws.model(
                    input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])
                ).loss
            )
            for e in planted
        ]
    assert max(direct) == direct[3] and direct[3] > 2 * max(direct[:3] + direct[4:])
    for rule, threshold in (("zscore", 2.0), ("absolute", (direct[3] + max(direct[4:])) / 2)):
        cleaner = plugin(ws, loss_rule=rule, loss_threshold=threshold)
        kept = cleaner.clean("a", planted)
        done = cleaner._done["a"]
        assert done.removed["loss"] == [3]
        assert kept == examples
        assert done.loss_cut is not None
        expected = [i for i, x in enumerate(direct) if x > done.loss_cut]
        assert expected == [3]
    quantile = plugin(ws, loss_rule="quantile", loss_threshold=0.5)
    quantile.clean("a", planted)
    median = float(np.quantile(direct, 0.5))
    assert quantile._done["a"].removed["loss"] == [i for i, x in enumerate(direct) if x > median]


def test_counts_travel_only_when_allowed_and_the_report_stays_local(
    ws: Workspace, tmp_path: Path
) -> None:
    texts = [*CLEAN, f"{CLEAN[0]} {TRIGGER}"]
    examples = encode(ws, texts)
    for allowed in (False, True):
        cleaner = plugin(ws, patterns=[re.escape(TRIGGER)], report_counts=allowed)
        store = ClientStateStore(tmp_path / str(allowed)).slot("cleaning")
        ctx = ClientContext("client-a", 3, 0, store=store)
        cleaner.clean("client-a", examples)
        update = ClientUpdate("client-a", {}, len(examples), {"train_loss": 1.0})
        out = cleaner.after_train(ctx, update)
        counts = {k: v for k, v in out.metrics.items() if k.startswith("cleaning/")}
        report = json.loads((store.root / "client-a" / "round-0003.json").read_text())
        assert report["removed"]["pattern"] == [len(CLEAN)]
        assert report["kept"] == len(CLEAN)
        if allowed:
            assert counts["cleaning/removed_pattern"] == 1.0
            assert counts["cleaning/kept"] == float(len(CLEAN))
            assert cleaner.public_metrics == frozenset(counts)
        else:
            assert counts == {} and cleaner.public_metrics == frozenset()


def test_a_client_left_with_nothing_is_told_why(ws: Workspace) -> None:
    cleaner = plugin(ws, words=["the", "what", "how", "which", "can", "why", "tell", "recommend"])
    with pytest.raises(CleaningError, match="removed all 8 training examples of client 'a'"):
        cleaner.clean("a", encode(ws, CLEAN))


def test_the_word_file_is_read_and_a_missing_one_named(tmp_path: Path) -> None:
    from fedllm.security.cleaning.client import read_words

    words = tmp_path / "words.txt"
    words.write_text("# a blocklist\nrobot\n\n  bad phrase  \n", encoding="utf-8")
    assert read_words(str(words)) == ["robot", "bad phrase"]
    assert read_words(None) == []
    with pytest.raises(ConfigError, match="algorithm.cleaning.words_file = .*cannot be read"):
        read_words(str(tmp_path / "missing.txt"))
